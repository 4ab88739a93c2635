#!/usr/bin/env bash
# Install ecdc_stream, then compress and decompress a recording with the 24 kHz model: the
# first argument, or the 20 s test recording in ../shared/audio beside this clone.
#
# The published EnCodec checkpoints are downloaded into the torch hub cache on first use. Where
# that is impossible (no network) and no folder is named by ECDC_STREAM_WEIGHTS, the script prints
# a warning and uses seeded random checkpoints instead: every step runs, but the audio is not speech.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet -e .

input="${1:-../shared/audio/test_24k.wav}"
if [ ! -f "$input" ]; then
    echo "quickstart: audio file '$input' not found; give one as the first argument: bash scripts/quickstart.sh FILE" >&2
    exit 2
fi
mkdir -p out

if [ -z "${ECDC_STREAM_WEIGHTS:-}" ] && ! python -c "from ecdc_stream.model import find_checkpoint as f; [f(n) for n in ('encodec_24khz-d7cc33bc.th', 'encodec_lm_24khz-1608e3c0.th')]" 2>/dev/null; then
    echo "quickstart: the published checkpoints could not be downloaded; using seeded random checkpoints in out/weights" >&2
    python -m ecdc_stream.model.random_weights out/weights
    export ECDC_STREAM_WEIGHTS=out/weights
fi

ecdc-stream encode "$input" out/quickstart.ecdc
ecdc-stream inspect out/quickstart.ecdc
ecdc-stream decode out/quickstart.ecdc out/quickstart.wav
