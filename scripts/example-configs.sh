#!/usr/bin/env bash
# Regenerates deploy/examples/{mixnode,mailbox,authority}.toml from what each
# role's `init` writes today: example values, data_dir where the systemd
# units in deploy/systemd/ keep it, and a header saying what to replace. Run
# it when an example_config test (mixnode, mailbox, directory crates) says an
# example no longer has the keys init writes. deploy/examples/directory.toml
# (the network's authorities, placeholders) is kept by hand; the relays'
# examples are made from it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bastet/target}"
cargo build --bins -p bastet-mixnode -p bastet-mailbox -p bastet-directory
bin="$CARGO_TARGET_DIR/debug"
examples=deploy/examples
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# finish WRITTEN DATA_DIR OUT: the header read from stdin, then the file init
# wrote with data_dir set to DATA_DIR; SED_EXTRA (if set) edits it further.
finish() {
    { cat; echo; sed -e "s|^data_dir = .*|data_dir = \"$2\"|" ${SED_EXTRA:+-e "$SED_EXTRA"} "$1"; } >"$3"
}

# The values below are also in the tests (tests/example_config.rs of each
# crate): change both together.
"$bin/bastet-mixnode" init --dir "$tmp/mixnode" --listen 0.0.0.0:4100 \
    --public-addr mix1.example.org:4100 --metrics-listen 127.0.0.1:9100 \
    --jurisdiction CH --operator "Example Operator" \
    --directory "$examples/directory.toml" >/dev/null
finish "$tmp/mixnode/mixnode.toml" /var/lib/bastet/mixnode "$examples/mixnode.toml" <<'EOF'
# EXAMPLE: deploy/examples/mixnode.toml, what `bastet-mixnode init` writes
# (scripts/example-configs.sh regenerates it; a test checks it has the same keys):
#   bastet-mixnode init --dir /var/lib/bastet/mixnode --listen 0.0.0.0:4100 \
#       --public-addr mix1.example.org:4100 --metrics-listen 127.0.0.1:9100 \
#       --jurisdiction CH --operator "Example Operator" --directory directory.toml
# Run init yourself rather than copying this file: it also makes the node's keys.
# REPLACE: the [directory] section is deploy/examples/directory.toml, whose
# authority keys and pins are placeholders; init copies your network's file.
EOF

"$bin/bastet-mailbox" init --dir "$tmp/mailbox" --listen 0.0.0.0:9000 \
    --api-listen 0.0.0.0:9443 --metrics-listen 127.0.0.1:9200 \
    --public-addr mailbox1.example.org:9000 --public-api-addr mailbox1.example.org:9443 \
    --jurisdiction CH --operator "Example Operator" \
    --directory "$examples/directory.toml" >/dev/null
finish "$tmp/mailbox/mailbox.toml" /var/lib/bastet/mailbox "$examples/mailbox.toml" <<'EOF'
# EXAMPLE: deploy/examples/mailbox.toml, what `bastet-mailbox init` writes
# (scripts/example-configs.sh regenerates it; a test checks it has the same keys):
#   bastet-mailbox init --dir /var/lib/bastet/mailbox --listen 0.0.0.0:9000 \
#       --api-listen 0.0.0.0:9443 --metrics-listen 127.0.0.1:9200 \
#       --public-addr mailbox1.example.org:9000 \
#       --public-api-addr mailbox1.example.org:9443 \
#       --jurisdiction CH --operator "Example Operator" --directory directory.toml
# Run init yourself rather than copying this file: it also makes the node's keys.
# REPLACE: the [directory] section is deploy/examples/directory.toml, whose
# authority keys and pins are placeholders; init copies your network's file.
EOF

allow=()
for i in 1 2 3 4; do allow+=(--allow "$(printf '%064x' "$i")"); done
"$bin/bastet-directory" init --dir "$tmp/directory" --listen 0.0.0.0:7000 \
    --metrics-listen 127.0.0.1:7001 --epoch-secs 3600 "${allow[@]}" >/dev/null
SED_EXTRA='/^allowed_nodes = /i\
# REPLACE: placeholder node ids (0...01 to 0...04). List the node_id that each\
# mixnode and mailbox server to admit printed at its init.' \
    finish "$tmp/directory/authority.toml" /var/lib/bastet/directory "$examples/authority.toml" <<'EOF'
# EXAMPLE: deploy/examples/authority.toml, what `bastet-directory init` writes
# (scripts/example-configs.sh regenerates it; a test checks it has the same keys):
#   bastet-directory init --dir /var/lib/bastet/directory --listen 0.0.0.0:7000 \
#       --metrics-listen 127.0.0.1:7001 --allow NODE_ID ...
# Run init yourself rather than copying this file: it also makes the key.
# To add by hand: one [[peers]] table per other authority of the network, with
# the url, identity_key and tls_pin its init printed (the same three keys as an
# [[authorities]] table of deploy/examples/directory.toml).
EOF

echo "wrote $examples/mixnode.toml, $examples/mailbox.toml, $examples/authority.toml" >&2
