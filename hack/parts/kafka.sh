# placeholder: being written
kafka_install() { :; }; kafka_start() { :; }; kafka_health() { return 1; }; kafka_stop() { :; }; kafka_env() { :; }
