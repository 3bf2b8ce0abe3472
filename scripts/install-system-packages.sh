#!/usr/bin/env bash
# Debian packages the built-in emoji-seq dataset renders its item images from.
# Installs them when missing and allowed (root + apt-get); otherwise says what to install.
set -euo pipefail
font=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
emoji_test=/usr/share/unicode/emoji/emoji-test.txt
if [[ -f $font && -f $emoji_test ]]; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  apt-get install -y -q fonts-noto-color-emoji unicode-data >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q fonts-noto-color-emoji unicode-data >/dev/null; }
else
  echo "note: emoji-seq needs $font and $emoji_test;" \
       "install them with: sudo apt-get install fonts-noto-color-emoji unicode-data" >&2
fi
