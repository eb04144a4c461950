#!/usr/bin/env bash
# The voice service's local engines, from Debian's packages: espeak-ng (speech), sox with its
# mp3 and base formats (conversion of speech), ffmpeg (decoding what clients send: ogg, mp3,
# webm, Vorbis or Opus), PocketSphinx with its US English model (transcription). `cognomega serve` uses them with no configuration.
#
#   ops/voice.sh --install    install what is missing (as root, or with sudo)
#   ops/voice.sh --check      exit 1 naming what is missing
set -euo pipefail

packages=(espeak-ng sox libsox-fmt-mp3 libsox-fmt-base ffmpeg pocketsphinx pocketsphinx-en-us)
programs=(espeak-ng sox soxi ffmpeg pocketsphinx_continuous)

die() { echo "ops/voice.sh: $*" >&2; exit 1; }

missing() {
  local p out=()
  for p in "${programs[@]}"; do command -v "$p" >/dev/null 2>&1 || out+=("$p"); done
  # The model PocketSphinx reads by default, and sox's mp3 writer.
  [ -d /usr/share/pocketsphinx/model/en-us ] || out+=("pocketsphinx-en-us")
  if command -v sox >/dev/null 2>&1 && ! sox -h 2>/dev/null | grep -q 'AUDIO FILE FORMATS:.* mp3'; then
    out+=("libsox-fmt-mp3")
  fi
  echo "${out[@]:-}"
}

case "${1:---check}" in
  --check)
    m=$(missing)
    [ -z "$m" ] || die "missing: $m; run ops/voice.sh --install"
    ;;
  --install)
    m=$(missing)
    [ -z "$m" ] && exit 0
    command -v apt-get >/dev/null 2>&1 || die "missing: $m; install ${packages[*]} with your package manager"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null 2>&1 || die "missing: $m; run this script as root to install them"
      sudo=(sudo)
    fi
    if ! apt-cache show pocketsphinx-en-us >/dev/null 2>&1; then "${sudo[@]}" apt-get update -qq; fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      "${packages[@]}" >&2
    m=$(missing)
    [ -z "$m" ] || die "installed ${packages[*]} but still missing: $m"
    ;;
  *) die "usage: ops/voice.sh --install | --check" ;;
esac
