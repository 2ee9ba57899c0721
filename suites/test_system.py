"""Plain testinfra tests: they run unchanged on every target through the `host` fixture."""


def test_is_linux(host):
    assert host.system_info.type == "linux"


def test_tmp_is_a_writable_directory(host):
    tmp = host.file("/tmp")
    assert tmp.is_directory
    assert host.run("touch /tmp/.portability-probe && rm /tmp/.portability-probe").rc == 0


def test_root_user_exists(host):
    assert host.user("root").uid == 0


def test_shell_runs_commands(host):
    assert host.check_output("echo %s", "hello world") == "hello world"


def test_passwd_is_readable(host):
    assert host.file("/etc/passwd").contains("^root:")
