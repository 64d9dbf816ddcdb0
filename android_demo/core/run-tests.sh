#!/usr/bin/env bash
# Compile the app's pure-Java core module and its tests with plain javac, then run the tests.
# No Gradle, no network, no JUnit: only a JDK (11 or newer) is needed.
#
#   android_demo/core/run-tests.sh              # build + run the unit tests
#   MOBILEC_CORE_BUILD=/tmp/x run-tests.sh      # build somewhere else (parallel runs)
#   run-tests.sh --build-only                   # compile, print the classpath, run nothing
#
# The last line of a test run is "N passed, M failed"; the exit status is non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${MOBILEC_CORE_BUILD:-$here/build/plain-javac}"

for tool in javac java; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run-tests.sh: '$tool' not found; install a JDK 11+ (Debian: apt-get install openjdk-17-jdk-headless)" >&2
    exit 127
  fi
done

rm -rf "$out/main" "$out/test"
mkdir -p "$out/main" "$out/test"

main_sources=()
while IFS= read -r -d '' f; do main_sources+=("$f"); done < <(find "$here/src/main/java" -name '*.java' -print0 | sort -z)
test_sources=()
while IFS= read -r -d '' f; do test_sources+=("$f"); done < <(find "$here/src/test/java" -name '*.java' -print0 | sort -z)

# --release 11: the same language level Gradle uses for the Android build; -Werror keeps it lint-clean.
javac --release 11 -encoding UTF-8 -Xlint:all -Werror -d "$out/main" "${main_sources[@]}"
javac --release 11 -encoding UTF-8 -Xlint:all,-serial -cp "$out/main" -d "$out/test" "${test_sources[@]}"

classpath="$out/main:$out/test"
if [[ "${1:-}" == "--build-only" ]]; then
  echo "$classpath"
  exit 0
fi
exec java -Djava.awt.headless=true -cp "$classpath" dev.mobilec.core.CoreTests
