"""Settings resolve like the comet_ml SDK: flags, env, COMET_CONFIG, ./.comet.config, ~."""

from __future__ import annotations

from pathlib import Path

import pytest

from cometfs.config import DEFAULT_SERVER_URL, resolve, root_url
from cometfs.errors import ConfigError


def ini(path: Path, **values: str) -> Path:
    path.write_text("[comet]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    return cwd, home


def test_defaults_to_comet_cloud_without_a_key(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    config = resolve(environ={}, cwd=cwd, home=home)
    assert config.server_url == DEFAULT_SERVER_URL and config.api_key is None
    with pytest.raises(ConfigError, match="COMET_API_KEY"):
        config.require_key()


def test_precedence_flags_env_named_file_cwd_home(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, home = dirs
    ini(
        home / ".comet.config",
        api_key="home-key",
        url_override="http://home:1/clientlib/",
        workspace="home-ws",
    )
    assert resolve(environ={}, cwd=cwd, home=home).api_key == "home-key"
    ini(cwd / ".comet.config", api_key="cwd-key")
    config = resolve(environ={}, cwd=cwd, home=home)
    assert (config.api_key, config.server_url, config.default_workspace) == (
        "cwd-key",
        "http://home:1",
        "home-ws",
    )
    named = ini(tmp_path / "named.ini", api_key="named-key")
    env = {"COMET_CONFIG": str(named)}
    assert resolve(environ=env, cwd=cwd, home=home).api_key == "named-key"
    env["COMET_API_KEY"] = "env-key"
    assert resolve(environ=env, cwd=cwd, home=home).api_key == "env-key"
    assert resolve(api_key="flag-key", environ=env, cwd=cwd, home=home).api_key == "flag-key"


def test_comet_config_may_name_a_directory(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, home = dirs
    folder = tmp_path / "conf"
    folder.mkdir()
    ini(folder / ".comet.config", api_key="dir-key")
    config = resolve(environ={"COMET_CONFIG": str(folder)}, cwd=cwd, home=home)
    assert config.api_key == "dir-key"


def test_only_scheme_host_port_of_the_url_counts(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    env = {"COMET_URL_OVERRIDE": "http://127.0.0.1:18777/some/prefix/clientlib/"}
    assert resolve(environ=env, cwd=cwd, home=home).server_url == "http://127.0.0.1:18777"
    flagged = resolve(server_url="https://example.com/x", environ=env, cwd=cwd, home=home)
    assert flagged.server_url == "https://example.com"


@pytest.mark.parametrize("bad", ["ftp://host", "not a url", "http://", ""])
def test_bad_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        root_url(bad)


def test_workspace_flags_limit_and_env_workspace_is_only_a_default(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    env = {"COMET_WORKSPACE": "env-ws"}
    assert resolve(environ=env, cwd=cwd, home=home).workspaces == ()
    assert resolve(workspaces=["a", "b"], environ=env, cwd=cwd, home=home).workspaces == ("a", "b")


def test_key_never_in_repr_or_errors(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, home = dirs
    config = resolve(api_key="secret-key-123", environ={}, cwd=cwd, home=home)
    assert "secret-key-123" not in repr(config)
    broken = tmp_path / "broken.ini"
    broken.write_text("api_key = secret-key-123\n[comet\n")
    with pytest.raises(ConfigError) as caught:
        resolve(environ={"COMET_CONFIG": str(broken)}, cwd=cwd, home=home)
    assert "secret-key-123" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["http://alice:s3cret-pw@127.0.0.1:1", "https://s3cret-pw@comet.example"]
)
def test_credentials_in_the_url_are_refused_without_echoing_them(
    dirs: tuple[Path, Path], url: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(server_url=url, environ={}, cwd=dirs[0], home=dirs[1])
    assert "s3cret-pw" not in str(caught.value)
    assert "credentials" in str(caught.value)
