#!/usr/bin/env bash
# Builds the wire decoder's fuzz target with -sanitize=fuzzer,address and runs it for a fixed
# number of iterations, seeded with the protocol test vectors.
#   scripts/fuzz-wire.sh [RUNS]     (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200000}
out=.fuzz
mkdir -p "$out/corpus"
cat > "$out/module.modulemap" <<MAP
module CKernels {
    header "$PWD/Sources/CKernels/include/CKernels.h"
    export *
}
MAP
clang -O1 -fsanitize=fuzzer-no-link,address -I Sources/CKernels/include -c Sources/CKernels/crc32c.c -o "$out/crc32c.o"
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name WireFuzz \
    -I "$out" -I Sources/CLZ4 \
    Sources/SlimWire/*.swift Tests/Fuzz/WireFuzz.swift "$out/crc32c.o" -llz4 -o "$out/wire-fuzz" \
    2> >(grep -v "Cannot export local symbol" >&2)
cp Protocol/vectors/valid/*.bin Protocol/vectors/invalid/*.bin "$out/corpus/"
"$out/wire-fuzz" -runs="$runs" -max_len=70000 -seed=1 -print_final_stats=1 "$out/corpus" 2>&1 | tail -n 12
echo "fuzz: $runs runs of the wire decoder completed without a crash"
