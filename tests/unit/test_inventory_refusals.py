"""What the inventory refuses before anything connects (issue 24): root as the project's user
or group, a system directory as its path or virtualenv, a key given twice, bytes that are not
UTF-8, names and paths longer than the servers take. Each: one paragraph naming the file, the
key (and its line, from a file) and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.inventory import InventoryError
from tasks.inventory_load import load_inventory
from tasks.layout import Layout, stage_path
from tasks.refusals import NAME_MAX, PATH_MAX, STAGED_RUN, SUN_PATH_MAX, VENV_ROOM, name_limit

from .conftest import BASE, make_inventory


def problem(**changes) -> str:
    with pytest.raises(InventoryError) as caught:
        make_inventory(**changes)
    message = str(caught.value)
    assert message.startswith("inventory.yaml: ") and message.endswith("Fix the inventory and run again; nothing "
                                                                       "was changed.")
    assert "\n" not in message and "Traceback" not in message
    return message


def from_file(tmp_path: Path, raw: bytes) -> str:
    path = tmp_path / "inventory.yaml"
    path.write_bytes(raw)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and message.endswith("nothing was changed.") and "\n" not in message
    return message


GOOD = b"""\
project:
  name: my_proj
  path: /opt/arches/my_proj
  virtualenv: /opt/arches/venv
  user: arches
broker:
  kind: redis
celery:
  concurrency: 2
hosts:
  prod:
    roles: [broker, worker, beat]
"""
assert yaml.safe_load(GOOD) == BASE


# --- root ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,said", [
    ("user", "root", "'project.user' is root: supervisord and the Celery programs run as this user"),
    ("user", 0, "'project.user' is root (0 is root's id)"),
    ("user", "0", "'project.user' is root ('0' is root's id)"),
    ("user", "000", "'project.user' is root ('000' is root's id)"),
    ("group", "root", "'project.group' is root: this group may read the broker password"),
    ("group", 0, "'project.group' is root (0 is root's id)"),
])
def test_root_is_never_the_project_user_or_group(key, value, said):
    message = problem(**{f"project__{key}": value})
    assert said in message and "must never be root" in message


def test_root_may_still_be_the_ssh_login_and_names_like_root_are_users():
    assert make_inventory(hosts__prod__user="root").hosts["prod"].user == "root"
    assert make_inventory(project__user="rooter").project.group == "rooter"


# --- system directories --------------------------------------------------------------------

SYSTEM_ITSELF = [
    ("/", "/"), ("/usr", "/usr"), ("/usr/local", "/usr/local"), ("/etc", "/etc"), ("/var", "/var"),
    ("/opt", "/opt"), ("/srv", "/srv"), ("/home", "/home"), ("/root", "/root"), ("/tmp", "/tmp"),
    ("/var/lib", "/var/lib"), ("/var/log", "/var/log"), ("/usr/bin", "/usr/bin"), ("/var/tmp", "/var/tmp"),
    ("/usr/local/bin", "/usr/local/bin"), ("/mnt", "/mnt"),
    # spelt another way: normalised before deciding
    ("/usr/./local/", "/usr/local"), ("//usr", "/usr"), ("/usr/", "/usr"), ("/opt/../usr", "/usr"),
    ("/opt/arches/../../etc", "/etc"), ("/opt/..", "/"), ("/./", "/"),
]


@pytest.mark.parametrize("key", ["path", "virtualenv"])
@pytest.mark.parametrize("value,normal", SYSTEM_ITSELF)
def test_a_system_directory_itself_is_refused(key, value, normal):
    message = problem(**{f"project__{key}": value})
    shown = normal if normal == value else f"{normal} (as {value!r} reads)"
    assert f"'project.{key}' is {shown}, a system directory itself: " in message


INSIDE_THE_SYSTEM = [
    ("/etc/my_proj", "/etc"), ("/etc/supervisor/venv", "/etc"), ("/bin/x", "/bin"), ("/sbin/x", "/sbin"),
    ("/lib/x", "/lib"), ("/lib64/x", "/lib64"), ("/boot/x", "/boot"), ("/dev/shm/x", "/dev"), ("/proc/1/x", "/proc"),
    ("/sys/x", "/sys"), ("/run/x", "/run"), ("/usr/share/my_proj", "/usr"),
    ("/usr/lib/python3/dist-packages/v", "/usr"),
    ("/usr/venv", "/usr"), ("/var/run/x", "/var/run"), ("/root/my_proj", "/root"), ("/var/lib/dpkg/x", "/var/lib/dpkg"),
    ("/var/lib/redis/x", "/var/lib/redis"), ("/opt/../etc/x", "/etc"), ("/usr/local/../lib/x", "/usr"),
]


@pytest.mark.parametrize("key", ["path", "virtualenv"])
@pytest.mark.parametrize("value,tree", INSIDE_THE_SYSTEM)
def test_a_directory_inside_the_systems_own_files_is_refused(key, value, tree):
    message = problem(**{f"project__{key}": value})
    assert f"'project.{key}' is " in message
    assert f", which lies inside {tree}" in message and "a directory that holds the system's own files" in message


@pytest.mark.parametrize("key", ["path", "virtualenv"])
@pytest.mark.parametrize("value,tree", [
    ("/var/lib/celery/my_proj", "/var/lib/celery"), ("/var/lib/fabcelery/x", "/var/lib/fabcelery"),
    ("/var/log/celery/venv", "/var/log/celery"), ("/var/log/supervisor/x", "/var/log/supervisor"),
])
def test_a_directory_inside_fabcelerys_own_is_refused(key, value, tree):
    assert (f"'project.{key}' is {value}, which lies inside {tree}, where fabcelery keeps files of its own that "
            "undeploy removes") in problem(**{f"project__{key}": value})


def test_fabcelerys_own_directories_are_all_refused_trees():
    # every directory the layout makes outside /etc and /run (which are refused anyway) is inside one
    layout = Layout(make_inventory().project)
    for made in (layout.state_dir, layout.fabcelery_dir, layout.worker_log, layout.supervisord_log):
        assert "lies inside" in problem(project__virtualenv=made + "/venv")


@pytest.mark.parametrize("value,kept", [
    ("/opt/arches/my_proj", "/opt/arches/my_proj"), ("/usr/local/arches/venv", "/usr/local/arches/venv"),
    ("/srv/my_proj", "/srv/my_proj"), ("/home/arches/venv", "/home/arches/venv"),
    ("/var/www/my_proj", "/var/www/my_proj"),
    ("/opt/arches/venv/", "/opt/arches/venv"), ("/opt/./arches//venv", "/opt/arches/venv"),
    ("/usr/local/src/my_proj", "/usr/local/src/my_proj"),
    ("/etcetera/my_proj", "/etcetera/my_proj"), ("/library/venv", "/library/venv"),
])
def test_a_directory_of_the_projects_own_is_kept_spelt_one_way(value, kept):
    assert make_inventory(project__virtualenv=value).project.virtualenv == kept
    assert make_inventory(project__path=value).project.path == kept


def test_dotdot_stays_refused_where_it_leads_elsewhere():
    # read lexically it would be /opt/venv; after a link it may be anywhere
    assert "'project.virtualenv' must be an absolute path without '..'; got '/opt/x/../venv'" in problem(
        project__virtualenv="/opt/x/../venv")


# --- a key given twice ---------------------------------------------------------------------

def test_the_same_host_named_twice_names_both_lines(tmp_path):
    raw = GOOD + b"    port: 2222\n  prod:\n    roles: [worker]\n"
    message = from_file(tmp_path, raw)
    assert "'hosts.prod' is given twice, at lines 11 and 14: YAML would keep the last" in message
    assert "beat" not in message           # the duplicate is named, not what the last one would cause


@pytest.mark.parametrize("raw,said", [
    (GOOD.replace(b"  user: arches\n", b"  user: arches\n  user: other\n"),
     "'project.user' is given twice, at lines 5 and 6"),
    (GOOD + b"broker:\n  kind: rabbitmq\n", "'broker' is given twice, at lines 6 and 13"),
    (GOOD.replace(b"  kind: redis\n", b"  kind: redis\n  kind: redis\n  kind: redis\n"),
     "'broker.kind' is given 3 times, at lines 7, 8 and 9"),
    # the same key for YAML, spelt two ways
    (GOOD + b'  "prod": {}\n', "'hosts.prod' is given twice, at lines 11 and 13"),
])
def test_a_key_given_twice_anywhere_is_refused(tmp_path, raw, said):
    assert said in from_file(tmp_path, raw)


def test_every_key_given_twice_is_named_at_once(tmp_path):
    raw = GOOD.replace(b"  user: arches\n", b"  user: arches\n  user: x\n") + b"  prod: {}\n"
    message = from_file(tmp_path, raw)
    assert "'project.user' is given twice" in message and "'hosts.prod' is given twice" in message


def test_a_merge_key_overrides_without_being_a_duplicate(tmp_path):
    raw = GOOD.replace(b"celery:\n  concurrency: 2\n", b"""celery:
  pools:
    celery: &pool {concurrency: 2, stopwaitsecs: 60}
    exports:
      <<: *pool
      concurrency: 1
      queues: [exports]
""")
    path = tmp_path / "inventory.yaml"
    path.write_bytes(raw)
    pools = load_inventory(path).celery.pools
    assert (pools["exports"].concurrency, pools["exports"].stopwaitsecs) == (1, 60)


# --- bytes that are not UTF-8 --------------------------------------------------------------

@pytest.mark.parametrize("raw,said", [
    (GOOD.replace(b"broker:\n", b"# caf\xe9 (Latin-1)\nbroker:\n"),
     "line 6 (0xe9 at column 6) holds a byte that is not UTF-8 (comments are read too"),
    (GOOD.replace(b"user: arches", b"user: arch\xffes"), "line 5 (0xff at column 13) holds a byte that is not UTF-8"),
    (GOOD.replace(b"broker:\n", b"# \xe9\n# \xfe\nbroker:\n"), "lines 6 (0xe9 at column 3) and 7 (0xfe at column 3) "
                                                              "hold bytes that are not UTF-8"),
    (GOOD + b"# cut short \xc3", "line 13 (0xc3 at column 13) holds a byte that is not UTF-8"),
])
def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path, raw, said):
    message = from_file(tmp_path, raw)
    assert said in message and "save the file as UTF-8" in message


def test_utf8_beyond_ascii_is_read(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_bytes(GOOD.replace(b"broker:\n", "# café, Straße, 日本\nbroker:\n".encode()))
    assert load_inventory(path).project.name == "my_proj"


def test_a_control_character_is_named_by_line(tmp_path):
    message = from_file(tmp_path, GOOD.replace(b"broker:\n", b"# bell \x07\nbroker:\n"))
    assert "line 6 holds the character U+0007, which YAML does not allow in a file" in message


def test_a_problem_read_from_a_file_names_its_line(tmp_path):
    message = from_file(tmp_path, GOOD.replace(b"concurrency: 2", b"concurrency: four").replace(b"user: arches",
                                                                                                  b"user: root"))
    assert "line 9: 'celery.concurrency' must be a whole number" in message
    assert "line 5: 'project.user' is root" in message


# --- lengths -------------------------------------------------------------------------------

def a_path(length: int) -> str:
    """An absolute path of `length` bytes (at least 6), in parts of at most 201."""
    path = "/opt"
    while length - len(path) > 202:
        path += "/" + "a" * 200
    return path + "/" + "b" * (length - len(path) - 1)


def test_a_path_helper_makes_the_length_asked_for():
    for length in (300, 3583, 3584, 4052, 4053):
        path = a_path(length)
        assert len(path) == length and not path.endswith("/") and max(map(len, path.split("/"))) <= 200


def test_the_longest_project_name_is_what_fits_supervisords_socket():
    longest, why = name_limit()
    assert longest == SUN_PATH_MAX - len("/run/-supervisor/supervisor.sock") == 75
    assert "/run/NAME-supervisor/supervisor.sock" in why
    fits = make_inventory(project__name="n" * longest)
    assert len(Layout(fits.project).socket) == SUN_PATH_MAX
    message = problem(project__name="n" * (longest + 1))
    assert "'project.name' is 76 characters long" in message and "at most 75: the deploy makes supervisord's socket" \
        in message


@pytest.mark.parametrize("key", ["project__user", "project__group", "hosts__prod__user"])
def test_user_and_group_names_have_at_most_32_characters(key):
    assert make_inventory(**{key: "u" * 32})
    message = problem(**{key: "u" * 33})
    assert f"'{key.replace('__', '.')}' is 33 characters long" in message and "at most 32: Linux user and group " \
        "names" in message


def test_a_5000_character_name_or_path_is_refused_without_being_repeated():
    for key, value, said in (
        ("project__name", "n" * 5000, "'project.name' is 5000 characters long"),
        ("project__path", "/" + "p" * 4999, "'project.path' is 5000 bytes long"),
        ("project__virtualenv", a_path(5000), "'project.virtualenv' is 5000 bytes long"),
        ("project__user", "u" * 5000, "'project.user' is 5000 characters long"),
        ("celery__app", "a" * 5000 + " x", "'celery.app' must be a dotted module path"),
        ("hosts", {"h" * 5000: {}}, "is 5000 characters long; at most 253"),
        ("hosts__prod__address", "a" * 5000, "'hosts.prod.address' is 5000 characters long"),
    ):
        message = problem(**{key: value})
        assert said in message and len(message) < 600, key


@pytest.mark.parametrize("key", ["path", "virtualenv"])
def test_a_part_of_a_path_has_at_most_255_bytes(key):
    assert make_inventory(**{f"project__{key}": "/opt/" + "p" * NAME_MAX})
    message = problem(**{f"project__{key}": "/opt/" + "p" * (NAME_MAX + 1)})
    assert f"'project.{key}' has a part of 256 bytes" in message and "at most 255 bytes (NAME_MAX)" in message


def test_the_project_path_leaves_room_for_the_settings_file_the_deploy_stages():
    staged = stage_path("/my_proj/settings_local.py", STAGED_RUN)
    longest = PATH_MAX - len(staged)
    assert make_inventory(project__path=a_path(longest)).project.path == a_path(longest)
    message = problem(project__path=a_path(longest + 1))
    assert (f"'project.path' is {longest + 1} bytes long, and the deploy writes PATH/my_proj/.settings_local.py"
            ".fabcelery-new.XXXXXXXXXX (the settings file, staged beside it): a path has at most 4095 bytes") in message
    assert f"so this one at most {longest} here" in message


def test_the_virtualenv_leaves_room_for_what_pip_puts_inside():
    longest = PATH_MAX - VENV_ROOM
    assert make_inventory(project__virtualenv=a_path(longest))
    message = problem(project__virtualenv=a_path(longest + 1))
    assert f"'project.virtualenv' is {longest + 1} bytes long, and pip puts files deep inside it" in message


def test_requirements_beside_a_long_project_path():
    path = a_path(4000)
    assert make_inventory(project__path=path, project__requirements="r" * 94)
    message = problem(project__path=path, project__requirements="r" * 95)
    assert "'project.requirements' is 95 bytes long, and the deploy reads PATH/REQUIREMENTS" in message


def test_a_rabbitmq_cluster_nodes_name_fits_an_erlang_atom():
    def cluster(first: str) -> dict:
        return {name: {"roles": ["broker", "worker"] + (["beat"] if i == 1 else []), "internal_address": f"10.0.0.{i}"}
                for i, name in enumerate((first, "mq2", "mq3"), 1)}

    assert make_inventory(broker__kind="rabbitmq", hosts=cluster("n" * 248))
    message = problem(broker__kind="rabbitmq", hosts=cluster("n" * 249))
    assert f"'hosts.{'n' * 60}…' would be the RabbitMQ node rabbit@" in message and "256 characters" in message
    assert "its part before the first dot may have at most 248" in message
