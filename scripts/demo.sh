#!/usr/bin/env bash
# make demo / make demo-stop: a local Comet-compatible server with demo artifacts, mounted
# at ./mnt, and a short tour. The API key is generated once, kept in a 0600 file and passed
# through the environment only, never on a command line.
set -euo pipefail
: "${DEMO_DIR:=.demo}" "${DEMO_PORT:=18777}" "${MNT:=mnt}" "${BIN:=.venv/bin}"
URL="http://127.0.0.1:${DEMO_PORT}"

stop() {
    if [ -d "$MNT" ] && { mountpoint -q "$MNT" 2>/dev/null || ! ls "$MNT" >/dev/null 2>&1; }; then
        "$BIN/cometfs" unmount "$MNT" || true
    fi
    if [ -f "$DEMO_DIR/server.pid" ]; then
        pid="$(cat "$DEMO_DIR/server.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$DEMO_DIR/server.pid"
    fi
}

start() {
    stop
    mkdir -p "$DEMO_DIR" "$MNT"
    chmod 700 "$DEMO_DIR"
    if [ ! -s "$DEMO_DIR/api_key" ]; then
        (umask 077; "$BIN/python" -c 'import secrets; print(secrets.token_hex(16))' > "$DEMO_DIR/api_key")
    fi
    COMET_API_KEY="$(cat "$DEMO_DIR/api_key")"
    export COMET_API_KEY
    "$BIN/cometfs" serve --store "$DEMO_DIR/store" --port "$DEMO_PORT" --demo \
        >"$DEMO_DIR/server.log" 2>&1 &
    echo $! > "$DEMO_DIR/server.pid"
    for _ in $(seq 100); do
        if "$BIN/python" -c "import urllib.request,sys; urllib.request.urlopen('$URL/clientlib/isAlive/ver', timeout=1)" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
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
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
