#!/usr/bin/env bash
# Install PortAudio and PulseAudio and start a PulseAudio daemon with a null sink, so that the
# audio-device tests have a real playback device (the null sink) and a real capture device (its
# monitor source) on a machine without a sound card. Run as root; safe to run twice.
set -euo pipefail

SINK=ecdc_null

# PortAudio on Debian reaches PulseAudio through ALSA's pulse plugin (libasound2-plugins).
if ! command -v pulseaudio >/dev/null || ! ldconfig -p | grep -q libportaudio.so.2; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins alsa-utils >/dev/null
fi

# Route the ALSA "default" device to PulseAudio, which is what PortAudio opens by default.
if [ ! -e /etc/asound.conf ] || ! grep -q "type pulse" /etc/asound.conf; then
    cat >/etc/asound.conf <<'ALSA'
pcm.!default { type pulse }
ctl.!default { type pulse }
pcm.pulse { type pulse }
ctl.pulse { type pulse }
ALSA
fi

# A per-user daemon run as root: it warns that root is unusual, which is fine in a container.
# No default script (-n): load only the native protocol and the null sink, and never exit when idle.
if ! pactl info >/dev/null 2>&1; then
    pulseaudio --daemonize=yes --exit-idle-time=-1 --disallow-exit=yes --use-pid-file=yes \
        --log-target=stderr -n \
        --load="module-native-protocol-unix auth-anonymous=1" \
        --load="module-null-sink sink_name=${SINK} rate=48000 channels=2" \
        2>/dev/null || true
    for _ in $(seq 50); do
        pactl info >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

pactl set-default-sink "${SINK}"
pactl set-default-source "${SINK}.monitor"
pactl info | grep -E "Default (Sink|Source)"
