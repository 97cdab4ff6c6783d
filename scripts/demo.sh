#!/usr/bin/env bash
# make demo / make demo-stop: a local Comet-compatible server with demo artifacts, mounted
# at ./mnt, a short tour, and DEMO_DIR/env to `source` (cometfs on PATH, the demo server's
# URL and key in COMET_URL_OVERRIDE / COMET_API_KEY). The API key is generated once, kept in
# a 0600 file and passed through the environment only, never on a command line.
set -euo pipefail
: "${DEMO_DIR:=.demo}" "${DEMO_PORT:=18777}" "${MNT:=mnt}" "${BIN:=.venv/bin}"
URL="http://127.0.0.1:${DEMO_PORT}"

# Unmount every cometfs mount of the demo server (./mnt, and ~/comet if the README was
# followed), then stop the server, but only a PID that is verifiably our `cometfs serve`.
stop() {
    local mounts m pid
    mounts="$("$BIN/cometfs" status --json 2>/dev/null | "$BIN/python" -c '
import json, sys
try:
    records = json.load(sys.stdin)
except ValueError:
    records = []
for r in records:
    dead_demo_mount = "error" in r and r["mountpoint"] == sys.argv[2]
    if r.get("server") == sys.argv[1] or dead_demo_mount:
        print(r["mountpoint"])
' "$URL" "$(realpath -m "$MNT")" || true)"
    while IFS= read -r m; do
        if [ -n "$m" ]; then "$BIN/cometfs" unmount --lazy "$m" || true; fi
    done <<<"$mounts"
    # Without a working cometfs (e.g. .venv removed) ./mnt may still be mounted.
    if mountpoint -q "$MNT" 2>/dev/null; then
        "$BIN/cometfs" unmount --lazy "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT" || true
    fi
    if [ -f "$DEMO_DIR/server.pid" ]; then
        pid="$(cat "$DEMO_DIR/server.pid")"
        if is_our_server "$pid"; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            echo "not stopping PID $pid: it is not this demo's cometfs server" >&2
        fi
        rm -f "$DEMO_DIR/server.pid"
    fi
}

# /proc/PID/cmdline is NUL-separated; ours is `.../cometfs serve --store DEMO_DIR/store ...`.
is_our_server() {
    local cmdline
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline")"
    [[ "$cmdline" == *cometfs* && "$cmdline" == *" serve "* && "$cmdline" == *"$DEMO_DIR/store"* ]]
}

port_in_use() {
    "$BIN/python" -c '
import socket, sys
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(0)
sys.exit(1)
' "$DEMO_PORT"
}

write_env() {
    local bin demo
    bin="$(cd "$BIN" && pwd)"
    demo="$(cd "$DEMO_DIR" && pwd)"
    (
        umask 077
        {
            echo "# source this file: cometfs on PATH; cometfs and the comet_ml SDK use the demo server"
            echo "export PATH=\"$bin:\$PATH\""
            echo "export COMET_URL_OVERRIDE=\"$URL/clientlib/\""
            echo "export COMET_API_KEY=\"\$(cat \"$demo/api_key\")\""
        } >"$DEMO_DIR/env"
    )
}

start() {
    stop
    if port_in_use; then
        local owner
        owner="$(ss -ltnpH "sport = :$DEMO_PORT" 2>/dev/null | grep -o 'users:.*' | head -n 1 || true)"
        echo "make demo: port $DEMO_PORT on 127.0.0.1 is already in use${owner:+ by $owner}." >&2
        echo "Stop that process, or pick another port: make demo DEMO_PORT=$((DEMO_PORT + 1))" >&2
        exit 1
    fi
    mkdir -p "$DEMO_DIR" "$MNT"
    chmod 700 "$DEMO_DIR"
    if [ ! -s "$DEMO_DIR/api_key" ]; then
        (umask 077; "$BIN/python" -c 'import secrets; print(secrets.token_hex(16))' > "$DEMO_DIR/api_key")
    fi
    COMET_API_KEY="$(cat "$DEMO_DIR/api_key")"
    export COMET_API_KEY
    "$BIN/cometfs" serve --store "$DEMO_DIR/store" --port "$DEMO_PORT" --demo \
        >"$DEMO_DIR/server.log" 2>&1 &
    local server_pid=$!
    echo "$server_pid" > "$DEMO_DIR/server.pid"
    for _ in $(seq 150); do
        if "$BIN/python" -c "import urllib.request; urllib.request.urlopen('$URL/clientlib/isAlive/ver', timeout=1)" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "make demo: the demo server did not start; $DEMO_DIR/server.log says:" >&2
            tail -n 5 "$DEMO_DIR/server.log" >&2
            rm -f "$DEMO_DIR/server.pid"
            exit 1
        fi
        sleep 0.1
    done
    write_env
    "$BIN/cometfs" mount "$MNT" --server-url "$URL" --cache-dir "$DEMO_DIR/cache" \
        --log-file "$DEMO_DIR/mount.log" --log-level INFO
    tour
}

show() { printf '\n\033[1m$ %s\033[0m\n' "$*"; eval "$@"; }

tour() {
    echo "cometfs demo: server $URL (store $DEMO_DIR/store), mounted at ./$MNT"
    show "ls $MNT $MNT/demo"
    show "ls -l $MNT/demo/mnist-mini"
    show "cat $MNT/demo/mnist-mini/.comet/artifact.json | head -n 20"
    show "ls $MNT/demo/mnist-mini/latest/train/ && ls $MNT/demo/mnist-mini/latest/train/7 | head -n 5"
    show "cat $MNT/demo/mnist-mini/production/.comet/tags.json"
    show "readlink $MNT/demo/titanic/latest/raw/full.csv"
    show "head -n 3 $MNT/demo/titanic/latest/train.csv"
    show "sha256sum $MNT/demo/tiny-net/latest/*.safetensors"
    show "du -sh $MNT/demo/*/latest/"
    show "$BIN/python -c \"import pandas as pd; print(pd.read_csv('$MNT/demo/titanic/latest/train.csv').describe().T.head())\""
    show "cat $MNT/.comet/status.json | head -n 12"
    printf '\nExplore ./%s with any tool; `make demo-stop` unmounts and stops the server.\n' "$MNT"
    printf 'To use the cometfs command (and the comet_ml SDK) with this server in your shell:\n\n'
    printf '    source %s/env\n\n' "$DEMO_DIR"
    printf 'then every example in README.md works as written, starting with: cometfs mount ~/comet\n'
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
