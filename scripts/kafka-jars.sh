#!/usr/bin/env bash
# Fetches Apache Kafka's own broker jars (and their runtime dependencies) from
# Maven Central with Maven into a cache directory, once. The test plugin
# (tests/plugins/kafka.py) runs the broker from there with `java -cp DIR/*`.
#
#   scripts/kafka-jars.sh [DEST]      (default: $HELIOSDB_CDC_KAFKA_DIR or
#                                      ~/.cache/heliosdb-cdc/kafka-$VERSION)
# Prints the directory holding the jars on its last line.
set -euo pipefail

VERSION="${HELIOSDB_CDC_KAFKA_VERSION:-3.9.1}"
SCALA="2.13"
DEST="${1:-${HELIOSDB_CDC_KAFKA_DIR:-$HOME/.cache/heliosdb-cdc/kafka-$VERSION}}"
LIBS="$DEST/libs"

if [ -f "$LIBS/.complete" ]; then
  echo "$LIBS"
  exit 0
fi
command -v mvn >/dev/null 2>&1 || { echo "mvn not found: run scripts/install-system-deps.sh" >&2; exit 1; }
command -v java >/dev/null 2>&1 || { echo "java not found: run scripts/install-system-deps.sh" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>heliosdb-cdc</groupId>
  <artifactId>kafka-test-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_${SCALA}</artifactId>
      <version>${VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-storage</artifactId>
      <version>${VERSION}</version>
    </dependency>
    <dependency>
      <!-- a logging backend so the broker logs (to stdout, captured by the plugin) -->
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
POM

# DEST may be any directory the user names: remove only directories this script
# made, never something else that is there (checked before downloading)
MARK=".heliosdb-cdc-kafka-jars"
ours() {
  # the marker, or (from before the marker) nothing but jars
  [ -f "$1/$MARK" ] || [ -z "$(find "$1" -mindepth 1 ! -name '*.jar' ! -name .complete -print -quit)" ]
}
for dir in "$LIBS" "$LIBS.tmp"; do
  if [ -e "$dir" ] && ! ours "$dir"; then
    echo "$dir exists and was not made by $0: move it away or choose another directory" >&2
    exit 1
  fi
done
rm -rf "$LIBS.tmp"
mkdir -p "$LIBS.tmp"
touch "$LIBS.tmp/$MARK"
mvn -q -B -f "$work/pom.xml" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >&2
rm -rf "$LIBS"
mv "$LIBS.tmp" "$LIBS"
touch "$LIBS/.complete"
echo "$LIBS"
