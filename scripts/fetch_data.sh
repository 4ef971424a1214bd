#!/usr/bin/env bash
# Puts Tiny Shakespeare at data/tinyshakespeare.txt and verifies its checksum.
#   scripts/fetch_data.sh            use data/ if already there, else a local copy in
#                                    $CHARGPT_SHARED_DATA or ../shared/data, else download
#   scripts/fetch_data.sh PATH       copy from PATH (a local copy: no network needed)
#   scripts/fetch_data.sh --download always download the public file
set -euo pipefail
cd "$(dirname "$0")/.."
url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
want="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
dest="data/tinyshakespeare.txt"

verify() {  # verify FILE [LABEL]: a clear message on mismatch
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "fetch_data: checksum mismatch for ${2:-$1} (not Tiny Shakespeare, or corrupted)" >&2
    echo "  expected sha256 $want" >&2
    echo "  got      sha256 $got" >&2
    return 1
  fi
}

src=""
case "${1:-}" in
  --download) ;;
  "")
    if [ -f "$dest" ] && verify "$dest" 2>/dev/null; then echo "fetch_data: $dest present and verified"; exit 0; fi
    for cand in "${CHARGPT_SHARED_DATA:-}" ../shared/data/tinyshakespeare.txt; do
      if [ -n "$cand" ] && [ -f "$cand" ]; then src="$cand"; break; fi
    done ;;
  -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
  *) src="$1"; [ -f "$src" ] || { echo "fetch_data: no such file: $src" >&2; exit 1; } ;;
esac

mkdir -p data
tmp="$dest.tmp"
if [ -n "$src" ]; then
  cp "$src" "$tmp"
  echo "fetch_data: copied $src"
else
  echo "fetch_data: downloading $url"
  local_copy_hint() {
    echo "  With a copy of Tiny Shakespeare (char-rnn's input.txt) at hand, pass it instead:" >&2
    echo "    scripts/fetch_data.sh /path/to/tinyshakespeare.txt" >&2
    echo "  or set CHARGPT_SHARED_DATA=/path/to/tinyshakespeare.txt (or put it at ../shared/data/)." >&2
  }
  ok=1
  if command -v curl >/dev/null; then curl -fsSL --retry 2 "$url" -o "$tmp" || ok=0
  elif command -v wget >/dev/null; then wget -q --tries=3 "$url" -O "$tmp" || ok=0
  else echo "fetch_data: need curl or wget to download" >&2; local_copy_hint; exit 1; fi
  if [ "$ok" = 0 ]; then
    rm -f "$tmp"
    echo "fetch_data: the download of $url failed (no network, or the URL moved)" >&2
    local_copy_hint
    exit 1
  fi
fi
if ! verify "$tmp" "${src:-$url}"; then rm -f "$tmp"; exit 1; fi
mv "$tmp" "$dest"
echo "fetch_data: $dest verified (sha256 $want)"
