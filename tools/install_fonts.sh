#!/usr/bin/env bash
# Install the Debian/Ubuntu font packages recommended for synthetic data (docs/fonts.md).
#
#   sudo tools/install_fonts.sh            # apt-get update, then install every package of the list
#   tools/install_fonts.sh --print         # print the packages and exit (no root needed)
#   tools/install_fonts.sh --dry-run       # print the apt-get command and exit (no root needed)
#
# The list lives in ONE place, strkit/data/synth/fontlists/debian-packages.txt (shipped in the package);
# every non-comment word of it is a package. APT_GET names the apt-get program (default apt-get).
# The renderer uses whatever fonts are installed: this is optional.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="$here/../strkit/data/synth/fontlists/debian-packages.txt"
apt="${APT_GET:-apt-get}"

if [ ! -f "$list" ]; then
  echo "error: package list $list not found (run this script from a strkit checkout)" >&2
  exit 2
fi
packages=$(sed -e 's/#.*//' "$list" | tr -s '[:space:]' ' ' | sed -e 's/^ //' -e 's/ $//')
count=$(echo "$packages" | wc -w)

case "${1:-}" in
  --print) echo "$packages"; exit 0 ;;
  --dry-run) echo "$apt update && $apt install -y --no-install-recommends $packages"; exit 0 ;;
  "") ;;
  *) echo "error: unknown option '$1' (use --print, --dry-run or nothing)" >&2; exit 2 ;;
esac

if ! command -v "$apt" >/dev/null 2>&1; then
  echo "error: $apt not found: this script is for Debian/Ubuntu; install the $count packages of $list with your package manager" >&2
  exit 2
fi
if [ "$(id -u)" != "0" ]; then
  echo "error: installing packages needs root: run sudo $0" >&2
  exit 2
fi
echo "installing $count font packages listed in $list:"
echo "+ $apt update"
"$apt" update
echo "+ $apt install -y --no-install-recommends $packages"
# shellcheck disable=SC2086  # the package names are meant to be split
"$apt" install -y --no-install-recommends $packages
echo "done: check with tools/synth.py --list-fonts"
