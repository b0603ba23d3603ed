# Source this file (`. .ci/node22.sh`): it puts a Node.js 22 or later first on PATH.
#
# Why: Haraka 3.3 and this plugin depend on @haraka/email-address, which needs Node 22
# (and Haraka's node-gyp/undici need 22.19+); on Node 20, npm ci prints dozens of
# EBADENGINE warnings and the result is untested. Debian 12 ships Node 18, and CI machines
# come with Node 20. When the `node` on PATH is older than 22, this installs the official
# Linux build of Node 22 that the npm registry ships as the package node-linux-<arch>
# (the binary is inside the package; nothing else is downloaded) into a cache directory
# and puts its bin/ first on PATH. npm itself stays the system one, run by that node.
#
# Environment: NODE22_DIR overrides the cache directory.

node22_major() {
  node -p 'Number(process.versions.node.split(".")[0])' 2>/dev/null || echo 0
}

if [ "$(node22_major)" -lt 22 ]; then
  node22_dir="${NODE22_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/haraka-plugin-milter/node22}"
  node22_pkg="node-linux-$(node -p process.arch 2>/dev/null || uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')"
  node22_bin="$node22_dir/node_modules/$node22_pkg/bin"
  if [ ! -x "$node22_bin/node" ]; then
    echo "node22: $(node --version 2>/dev/null || echo 'no node') is older than 22;" \
      "installing $node22_pkg@22 from the npm registry into $node22_dir" >&2
    mkdir -p "$node22_dir"
    npm install --prefix "$node22_dir" --no-save --no-audit --no-fund --no-package-lock --no-update-notifier \
      "$node22_pkg@22" </dev/null >&2
  fi
  export PATH="$node22_bin:$PATH"
  if [ "$(node22_major)" -lt 22 ]; then
    echo "node22: could not put Node.js 22 on PATH (node is $(node --version 2>/dev/null))" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
unset -f node22_major
