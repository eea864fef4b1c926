#!/usr/bin/env bash
# W2 (raw uint8 frames, small CNN under TimeDistributed) side by side with the peers;
# see bench-w1.sh for the method and the environment variables (ROUNDS, NO_COMPILE, OUT).
exec "$(dirname "$0")/bench-w1.sh" W2
