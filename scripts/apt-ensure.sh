# Sourced by the setup scripts: install Debian packages only when missing.
#   apt_ensure TAG PKG...   (TAG prefixes the one line said when installing)
# Idempotent and quick when everything is there; waits for a dpkg lock another
# installer holds; refreshes the package lists only when an install needs it.
apt_ensure() {
    local tag=$1; shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "$tag: installing ${missing[*]}" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    local apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        "${apt[@]}" update -qq >/dev/null
        "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    }
}
