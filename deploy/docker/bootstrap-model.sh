#!/bin/sh
# The compose `trainer` one-shot. Without arguments: make sure the registry has a current model,
# training one on a synthetic fleet the first time (so `docker compose up` works out of the box).
# With arguments it runs them instead, e.g. to retrain on your own data:
#   docker compose run --rm trainer trainer fit --config /app/configs/trainer.yaml --output /models/demo
set -eu
if [ "$#" -gt 0 ]; then
  exec "$@"
fi
registry="${MODEL_REGISTRY:-/models/demo}"
if [ -f "$registry/current" ]; then
  echo "model $(cat "$registry/current") is current in $registry; not training"
  exit 0
fi
detector synth --out /data/demo
TRAINER_DATA__PATHS='["/data/demo/normal.csv"]' \
  trainer fit --config /app/configs/trainer.yaml --output "$registry" --no-progress
