#!/usr/bin/env bash
# Builds CivetWeb 1.15 from Debian's source package (never the binary libcivetweb, which
# crashes on every HTTPS request with OpenSSL 3). The source is fetched with a private apt
# configuration under build/apt, so the system's apt sources are never edited.
# Compiled with the OpenSSL 3 API, OpenSSL linked (not dlopened), no CGI, no file serving,
# and no file system access at all (NO_FILESYSTEMS): without it CivetWeb stats a .htpasswd
# in the directory of every request's path on the host (/v1/.htpasswd for /v1/tokens),
# even with NO_FILES and callback handlers, which costs a syscall per request and would let
# a file dropped there switch on basic authentication. NO_FILESYSTEMS wants the error and
# access loggers from us: mk/civetweb/*.inl. mk/civetweb/*.patch are applied to the source
# (strict-framing.patch: what the appliance cannot check from its callbacks, see its head).
# Rebuilt whenever these flags or the patches change (the stamp holds their hash).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/build/civetweb"
flags="-DOPENSSL_API_3_0 -DNO_SSL_DL -DNO_CGI -DNO_FILES -DNO_FILESYSTEMS -DNO_CACHING
-DMG_EXTERNAL_FUNCTION_mg_cry_internal_impl -DMG_EXTERNAL_FUNCTION_log_access"
patches=$(cat "$top"/mk/civetweb/*.patch | sha256sum | cut -c1-16)
stamp="$flags
patches $patches"
[ -f "$out/libcivetweb.a" ] && [ -f "$out/civetweb.h" ] &&
	[ "$(cat "$out/flags" 2>/dev/null)" = "$stamp" ] && exit 0

apt_dir="$top/build/apt"
mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d,src}
echo "deb-src http://deb.debian.org/debian bookworm main" >"$apt_dir/sources.list"
apt_opts=(
	-o "Dir::Etc::SourceList=$apt_dir/sources.list"
	-o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
	-o "Dir::Etc::PreferencesParts=$apt_dir/preferences.d"
	-o "Dir::State::Lists=$apt_dir/lists"
	-o "Dir::Cache=$apt_dir/cache"
	-o "APT::Sandbox::User=root"
)
cd "$apt_dir/src"
# Guard the version: the API and the traps we measured are those of 1.15.
if ! ls civetweb_1.15*.dsc >/dev/null 2>&1; then
	echo "civetweb: fetching Debian's source package"
	apt-get "${apt_opts[@]}" -q update </dev/null >/dev/null
	apt-get "${apt_opts[@]}" -q source --download-only civetweb </dev/null >/dev/null
fi
ls civetweb_1.15*.dsc >/dev/null 2>&1 || { echo "civetweb: Debian no longer serves 1.15" >&2; exit 1; }
rm -rf tree
dpkg-source --no-check -x civetweb_1.15*.dsc tree >/dev/null
for p in "$top"/mk/civetweb/*.patch; do
	patch -d tree -p1 --forward --quiet <"$p" || { echo "civetweb: $p does not apply" >&2; exit 1; }
done

mkdir -p "$out"
cc -c -O2 -g -fPIE -fstack-protector-strong -D_FORTIFY_SOURCE=2 \
	$flags -I"$top/mk/civetweb" \
	-Itree/include tree/src/civetweb.c -o "$out/civetweb.o"
ar rcs "$out/libcivetweb.a" "$out/civetweb.o"
cp tree/include/civetweb.h "$out/civetweb.h"
echo "$stamp" >"$out/flags"
echo "civetweb: built $out/libcivetweb.a"
