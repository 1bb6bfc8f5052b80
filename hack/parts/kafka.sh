# Apache Kafka, single-node KRaft (broker + controller in one JVM), assembled
# from Maven Central jars because the release tarballs are not reachable here.
# 4.4.0 is listed on Central but incomplete (kafka-tools-api missing), so 4.3.1.
KAFKA_VERSION=${BGP_KAFKA_VERSION:-4.3.1}
KAFKA_LOG4J_VERSION=${BGP_KAFKA_LOG4J_VERSION:-2.25.3}
KAFKA_PORT=${BGP_KAFKA_PORT:-19092}
KAFKA_SASL_PORT=${BGP_KAFKA_SASL_PORT:-19093}
KAFKA_CONTROLLER_PORT=${BGP_KAFKA_CONTROLLER_PORT:-19094}
# SASL_PLAINTEXT again, on the address pods reach (advertised as that address).
KAFKA_PODS_PORT=${BGP_KAFKA_PODS_PORT:-19095}
# TLS, with the rig's private CA (hack/lib.sh rig_pki): server auth only; client
# auth required (mTLS); SASL over TLS (PLAIN, SCRAM); and SASL over TLS on the
# pod-facing address, for the seed's own security settings on the node.
KAFKA_SSL_PORT=${BGP_KAFKA_SSL_PORT:-19096}
KAFKA_MTLS_PORT=${BGP_KAFKA_MTLS_PORT:-19097}
KAFKA_SASL_SSL_PORT=${BGP_KAFKA_SASL_SSL_PORT:-19098}
KAFKA_PODS_SSL_PORT=${BGP_KAFKA_PODS_SSL_PORT:-19099}
# SASL_SSL with OAUTHBEARER: tokens from the rig's OIDC part (hack/parts/oidc.sh),
# checked by Kafka's own validator against its JWKS.
KAFKA_OAUTH_PORT=${BGP_KAFKA_OAUTH_PORT:-19100}
KAFKA_SCRAM_USER=bgpersist
KAFKA_SCRAM_PASSWORD=bgpersist-secret
KAFKA_HOME=$CACHE_DIR/kafka-$KAFKA_VERSION
KAFKA_DIR=$RIG_DIR/kafka

# Run a Kafka tool class (StorageTool, org.apache.kafka.tools.TopicCommand, ...)
# on the cached jars, logging only warnings, to stderr, like the shipped scripts.
kafka_java() {
  java -cp "$KAFKA_HOME/libs/*" -Dlog4j2.configurationFile="$KAFKA_HOME/tools-log4j2.properties" "$@"
}

kafka_install() {
  [ -f "$KAFKA_HOME/.complete" ] && return 0
  command -v java >/dev/null || apt_need openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_need maven
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central"
  rm -rf "$KAFKA_HOME"
  # Assemble in a scratch dir and move it into place, so a failed or
  # interrupted fetch never leaves a half-filled cache dir behind.
  local w; w=$(mktemp -d "$CACHE_DIR/build-kafka.XXXX")
  # kafka-tools brings the CLI classes (TopicCommand, console producer and
  # consumer) for tests; its Connect runtime (Jetty, Jersey, ...) is not needed.
  # Kafka 4 still logs through slf4j 1.7, hence the slf4j 1.x binding.
  cat > "$w/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>bgprig</groupId>
  <artifactId>kafka-rig</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>3.8.1</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
POM
  # A private local repository keeps everything under CACHE_DIR.
  # Maven's output is only worth reading when it fails.
  mvn -B -f "$w/pom.xml" -Dmaven.repo.local="$CACHE_DIR/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$w/libs" >"$w/mvn.log" 2>&1 \
    || { grep -m 3 ERROR "$w/mvn.log" >&2; rm -rf "$w"; die "fetching Kafka $KAFKA_VERSION from Maven Central failed"; }
  # Broker output goes to stdout, which spawn captures in RIG_DIR/logs/kafka.log.
  cat > "$w/log4j2.properties" <<'LOG4J'
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
# Per-request and per-partition chatter drowns the useful lines.
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
LOG4J
  cat > "$w/tools-log4j2.properties" <<'LOG4J'
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
LOG4J
  mv "$w/pom.xml" "$w/kafka-rig.pom"
  rm -f "$w/mvn.log"
  touch "$w/.complete"
  mv "$w" "$KAFKA_HOME"
}

kafka_config() {
  mkdir -p "$KAFKA_DIR"
  local jaas='org.apache.kafka.common.security.scram.ScramLoginModule required;'
  local plain="org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SCRAM_USER=\"$KAFKA_SCRAM_PASSWORD\";"
  local oauth='org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;'
  rig_pki
  cat > "$KAFKA_DIR/server.properties" <<PROPS
# written by hack/parts/kafka.sh on every start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,PODS://$RIG_HOST_IP:$KAFKA_PODS_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT,PODS_SSL://$RIG_HOST_IP:$KAFKA_PODS_SSL_PORT,OAUTH://127.0.0.1:$KAFKA_OAUTH_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,PODS://$RIG_HOST_IP:$KAFKA_PODS_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT,MTLS://127.0.0.1:$KAFKA_MTLS_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT,PODS_SSL://$RIG_HOST_IP:$KAFKA_PODS_SSL_PORT,OAUTH://127.0.0.1:$KAFKA_OAUTH_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT,PODS:SASL_PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL,PODS_SSL:SASL_SSL,OAUTH:SASL_SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$PKI_DIR/server.p12
ssl.keystore.password=$PKI_PASSWORD
ssl.key.password=$PKI_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$PKI_DIR/truststore.p12
ssl.truststore.password=$PKI_PASSWORD
listener.name.mtls.ssl.client.auth=required
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$jaas
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$jaas
listener.name.pods_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.pods_ssl.plain.sasl.jaas.config=$plain
listener.name.pods_ssl.scram-sha-256.sasl.jaas.config=$jaas
listener.name.pods_ssl.scram-sha-512.sasl.jaas.config=$jaas
listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauth.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.oauth.oauthbearer.sasl.jaas.config=$oauth
# Only the OAUTH listener enables OAUTHBEARER, so these apply to it alone.
sasl.oauthbearer.jwks.endpoint.url=$OIDC_ISSUER/jwks
sasl.oauthbearer.expected.audience=$OIDC_AUDIENCE
sasl.oauthbearer.expected.issuer=$OIDC_ISSUER
inter.broker.listener.name=PLAINTEXT
listener.name.sasl_plaintext.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$jaas
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$jaas
listener.name.pods.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.pods.scram-sha-256.sasl.jaas.config=$jaas
listener.name.pods.scram-sha-512.sasl.jaas.config=$jaas
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=true
# One broker: every internal topic must fit on it.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create consumer groups constantly; the default 3 s delay only slows them.
group.initial.rebalance.delay.ms=0
PROPS
}

# Format once; SCRAM credentials are written into the bootstrap metadata here,
# since a KRaft broker cannot add the first user over a SASL listener it guards.
kafka_format() {
  [ -f "$KAFKA_DIR/data/meta.properties" ] && return 0
  # A Kafka cluster id is 16 random bytes, URL-safe base64 without padding.
  # One starting with '-' would be parsed as an option, so draw again (Kafka's
  # own Uuid.randomUuid does the same).
  local cluster_id=-
  while [ "${cluster_id#-}" != "$cluster_id" ]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  log "formatting Kafka storage in $KAFKA_DIR/data"
  kafka_java kafka.tools.StorageTool format --config "$KAFKA_DIR/server.properties" \
    --cluster-id "$cluster_id" --ignore-formatted \
    --add-scram "SCRAM-SHA-256=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]" \
    > "$RIG_DIR/logs/kafka-format.log" 2>&1 || fail_part kafka "storage format failed"
}

kafka_port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
kafka_ports_open() {
  local p
  for p in "$KAFKA_PORT" "$KAFKA_SASL_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SSL_PORT" "$KAFKA_MTLS_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_OAUTH_PORT"; do
    kafka_port_open "$p" || return 1
  done
}

kafka_start() {
  if ! is_running kafka; then
    # Otherwise the wait below could mistake someone else's listener for ours.
    local p
    for p in "$KAFKA_PORT" "$KAFKA_SASL_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SSL_PORT" "$KAFKA_MTLS_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_OAUTH_PORT"; do
      kafka_port_open "$p" && fail_part kafka "port $p is held by another process"
    done
    host_ip_up
    # The OAUTH listener reads the JWKS as the broker starts: bring the
    # token endpoint up first, also for `hack/rig up kafka` alone.
    if ! oidc_health; then
      log "kafka needs the oidc part: starting it"
      oidc_install
      oidc_start
    fi
    kafka_config
    kafka_format
    # C1 only and the serial GC: on 2 busy cores this halves start-up (about
    # 8 s -> 4 s) and costs nothing that matters for a test broker.
    spawn kafka java -Xms128m -Xmx512m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="$OIDC_ISSUER/jwks" \
      -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
      -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$KAFKA_DIR/server.properties"
  fi
  # KafkaRaftServer logs "Kafka Server started" only after the broker has
  # caught up with the metadata log and been unfenced, i.e. it serves requests.
  local i
  for i in $(seq 1 300); do
    if kafka_ports_open && grep -q 'Kafka Server started' "$RIG_DIR/logs/kafka.log" 2>/dev/null; then
      return 0
    fi
    is_running kafka || fail_part kafka "process exited"
    sleep 0.2
  done
  fail_part kafka "not serving on $KAFKA_PORT/$KAFKA_SASL_PORT after 60 s"
}

kafka_health() { is_running kafka && kafka_ports_open; }
kafka_stop() { stop_pid kafka; }
kafka_env() {
  echo "BGP_KAFKA_PLAINTEXT=127.0.0.1:$KAFKA_PORT"
  echo "BGP_KAFKA_SASL=127.0.0.1:$KAFKA_SASL_PORT"
  echo "BGP_KAFKA_SASL_FOR_PODS=$RIG_HOST_IP:$KAFKA_PODS_PORT"
  echo "BGP_KAFKA_SSL=127.0.0.1:$KAFKA_SSL_PORT"
  echo "BGP_KAFKA_MTLS=127.0.0.1:$KAFKA_MTLS_PORT"
  echo "BGP_KAFKA_SASL_SSL=127.0.0.1:$KAFKA_SASL_SSL_PORT"
  echo "BGP_KAFKA_SASL_SSL_FOR_PODS=$RIG_HOST_IP:$KAFKA_PODS_SSL_PORT"
  echo "BGP_KAFKA_OAUTH=127.0.0.1:$KAFKA_OAUTH_PORT"
  echo "BGP_RIG_CA=$PKI_DIR/ca.pem"
  echo "BGP_RIG_OTHER_CA=$PKI_DIR/other-ca.pem"
  echo "BGP_RIG_CLIENT_CERT=$PKI_DIR/client.pem"
  echo "BGP_RIG_CLIENT_KEY=$PKI_DIR/client.key"
  echo "BGP_KAFKA_SCRAM_USER=$KAFKA_SCRAM_USER"
  echo "BGP_KAFKA_SCRAM_PASSWORD=$KAFKA_SCRAM_PASSWORD"
  echo "BGP_KAFKA_VERSION=$KAFKA_VERSION"
  # The install, for tests that run a broker of their own (tests/writers/harness/owned_kafka.rs).
  echo "BGP_KAFKA_HOME=$KAFKA_HOME"
}
