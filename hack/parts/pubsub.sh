# The Pub/Sub emulator that ships with the Cloud SDK (preinstalled on the
# project's machines; its apt source is not reachable, so it is not installed here).
PUBSUB_PORT=${BGP_PUBSUB_PORT:-18085}
PUBSUB_PROJECT=${BGP_PUBSUB_PROJECT:-bgpersist-test}

pubsub_launcher() {
  local d
  for d in /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk; do
    if [ -x "$d/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]; then
      echo "$d/platform/pubsub-emulator/bin/cloud-pubsub-emulator"; return 0
    fi
  done
  return 1
}

pubsub_install() {
  pubsub_launcher >/dev/null || die "Pub/Sub emulator not found (Debian package google-cloud-cli-pubsub-emulator)"
  command -v java >/dev/null || apt_need default-jre-headless
}

pubsub_start() {
  spawn pubsub "$(pubsub_launcher)" --host=127.0.0.1 --port="$PUBSUB_PORT"
  local i
  for i in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$PUBSUB_PORT/" >/dev/null 2>&1 && return 0
    is_running pubsub || fail_part pubsub "process exited"
    sleep 0.2
  done
  fail_part pubsub "not answering on $PUBSUB_PORT after 30 s"
}

pubsub_health() { curl -sf "http://127.0.0.1:$PUBSUB_PORT/" >/dev/null 2>&1; }
pubsub_stop() { stop_pid pubsub; }
pubsub_env() {
  echo "BGP_PUBSUB_ENDPOINT=http://127.0.0.1:$PUBSUB_PORT"
  echo "BGP_PUBSUB_PROJECT=$PUBSUB_PROJECT"
}
