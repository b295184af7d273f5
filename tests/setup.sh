#!/usr/bin/env bash
# Installs everything the test suite needs, idempotently, on a fresh Debian machine of this project's
# kind (Python 3.11+, root or sudo): the Debian packages the tests call (prometheus/promtool for the ops
# tests, Java 17 and Maven for the Apache Kafka broker, chromium for the UI tests through Playwright), the
# project with its test extra in ./.venv, and the Kafka broker jars from Maven Central (cached in
# ~/.cache/metamorph, see tests/apache). It is the first half of the README's test command; the second
# half is pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need+=(prometheus)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v chromium >/dev/null || need+=(chromium)  # the UI tests drive it through Playwright
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/setup.sh: installing Debian packages: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
# Resolve the broker jars now, so the first test does not pay for it inside its timeout.
.venv/bin/python -c 'from tests.apache import kafka_classpath; kafka_classpath()'
