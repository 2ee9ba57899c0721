from portability.facts import parse_probe, version_tuple

DEBIAN_12 = """kernel_release=6.18.44-fc-v657
arch=x86_64
os_id=debian
os_version_id=12
os_pretty=Debian GNU/Linux 12 (bookworm)
boot_id=aaaa
libc_line=glibc 2.36
python=3.11.2
container_marker=docker
cgroup=2
cpus=2
"""

BUSYBOX = """kernel_release=6.18.44-fc-v657
arch=x86_64
boot_id=aaaa
cgroup=1
cpus=2
"""

MUSL = """kernel_release=6.1.0-50-amd64
arch=aarch64
os_id=alpine
os_version_id=3.20.1
boot_id=bbbb
libc_line=musl 1.2.5
python=3.12.3
hypervisor=1
"""


def test_debian_container_facts():
    facts = parse_probe(DEBIAN_12, kind="container", host_boot_id="aaaa")
    assert facts.kernel_release == "6.18.44-fc-v657"
    assert facts.kernel_version == (6, 18, 44)
    assert (facts.os_id, facts.os_version_id) == ("debian", "12")
    assert (facts.libc, facts.libc_version) == ("glibc", "2.36")
    assert facts.python == "3.11.2"
    assert facts.virtualization == "container"
    assert facts.shares_host_kernel is True
    assert facts.cgroup_version == 2
    assert facts.cpus == 2


def test_minimal_image_has_no_userland_facts():
    facts = parse_probe(BUSYBOX, kind="container", host_boot_id="aaaa")
    assert facts.os_id is None and facts.libc is None and facts.python is None
    assert facts.cgroup_version == 1


def test_ssh_target_detects_vm_and_musl_and_other_kernel():
    facts = parse_probe(MUSL, kind="ssh", host_boot_id="aaaa")
    assert facts.virtualization == "vm"
    assert (facts.libc, facts.libc_version) == ("musl", "1.2.5")
    assert facts.shares_host_kernel is False
    assert facts.arch == "aarch64"


def test_glibc_banner_from_libc_so():
    line = "libc_line=GNU C Library (Debian GLIBC 2.31-13+deb11u11) stable release version 2.31.\n"
    facts = parse_probe(line, kind="ssh", host_boot_id=None)
    assert (facts.libc, facts.libc_version) == ("glibc", "2.31")
    assert facts.shares_host_kernel is False  # unknown host boot id never claims sharing


def test_first_value_wins_and_garbage_is_ignored():
    facts = parse_probe("arch=x86_64\narch=evil\nnonsense line\n=x\n", kind="local", host_boot_id=None)
    assert facts.arch == "x86_64"
    assert facts.virtualization == "none"


def test_version_tuple():
    assert version_tuple("5.10.0-32-amd64") == (5, 10, 0)
    assert version_tuple("6.12.117+deb13-amd64") == (6, 12, 117)
    assert version_tuple("") == ()
    assert version_tuple(None) == ()
