# placeholder: being written
redis_install() { :; }; redis_start() { :; }; redis_health() { return 1; }; redis_stop() { :; }; redis_env() { :; }
