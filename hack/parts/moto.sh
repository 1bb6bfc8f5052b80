# placeholder: being written
moto_install() { :; }; moto_start() { :; }; moto_health() { return 1; }; moto_stop() { :; }; moto_env() { :; }
