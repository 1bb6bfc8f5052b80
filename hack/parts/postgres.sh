# placeholder: being written
postgres_install() { :; }; postgres_start() { :; }; postgres_health() { return 1; }; postgres_stop() { :; }; postgres_env() { :; }
