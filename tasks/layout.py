"""Where a project's files live on a server (the seed's layout, per project)."""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import DEFAULT_POOL, Project

# Debian's (and Ubuntu's) `supervisor` package: a supervisord run as root by systemd, with
# this config, which includes LEGACY_PROGRAMS_DIR/*.conf
SYSTEM_SUPERVISORD_CONF = "/etc/supervisor/supervisord.conf"
LEGACY_PROGRAMS_DIR = "/etc/supervisor/conf.d"


@dataclass(frozen=True)
class Layout:
    project: Project

    @property
    def name(self) -> str:
        return self.project.name

    # supervisord: its own config, socket and pid file, so two projects share a server
    @property
    def supervisord_conf(self) -> str:
        return f"/etc/supervisor/{self.name}-supervisord.conf"

    @property
    def supervisor_run_dir(self) -> str:
        """supervisord's socket and pid file: it runs as the project user, so they live in a
        directory of that user's (the unit's RuntimeDirectory), not in /run itself."""
        return f"/run/{self.name}-supervisor"

    # the programs: in a directory that only this project's supervisord includes, never in
    # /etc/supervisor/conf.d, which the root supervisord of Debian's `supervisor` package loads
    @property
    def programs_dir(self) -> str:
        return f"/etc/supervisor/{self.name}-programs.d"

    @property
    def programs_include(self) -> str:
        """The [include] files= of the project's supervisord.conf."""
        return f"{self.programs_dir}/{self.name}-*.conf"

    @property
    def celeryd_conf(self) -> str:
        return f"{self.programs_dir}/{self.name}-celeryd.conf"

    def pool_conf(self, pool: str) -> str:
        """A worker pool's program file; the pool named celery keeps the name it always had."""
        return of_pool(self.celeryd_conf, pool)

    @property
    def pool_conf_glob(self) -> tuple[str, str]:
        """(directory, name pattern) of the other pools' files, so that a pool's file that the
        inventory no longer names is found (and removed)."""
        return self.programs_dir, f"{self.name}-celeryd-*.conf"

    @property
    def celerybeat_conf(self) -> str:
        return f"{self.programs_dir}/{self.name}-celerybeat.conf"

    # where fabcelery before 2026-12 put the program files: Debian's root supervisord loads
    # them too, so a deploy moves them out (and an undeploy removes them)
    @property
    def legacy_programs_glob(self) -> tuple[str, str]:
        """(directory, name pattern) of every program file an earlier fabcelery may have left
        there (celeryd, celeryd-POOL, celerybeat; programs.legacy_program_files picks them)."""
        return LEGACY_PROGRAMS_DIR, f"{self.name}-celery*.conf"

    def legacy_conf(self, path: str) -> str:
        """Where an earlier fabcelery kept the program file that now lives at `path`."""
        return f"{LEGACY_PROGRAMS_DIR}/{path.rpartition('/')[2]}"

    @property
    def socket(self) -> str:
        return f"{self.supervisor_run_dir}/supervisor.sock"

    @property
    def supervisord_pid(self) -> str:
        return f"{self.supervisor_run_dir}/supervisord.pid"

    # where a supervisord run as root (fabcelery before 2026-12) kept them: a deploy that
    # finds its pid file alive moves supervisord over to the project user
    @property
    def legacy_supervisord_pid(self) -> str:
        return f"/run/{self.name}-supervisord.pid"

    @property
    def supervisord_log(self) -> str:
        return f"/var/log/supervisor/{self.name}-supervisord.log"

    @property
    def logrotate_conf(self) -> str:
        """Rotation of the project's logs (Debian's logrotate, daily)."""
        return f"/etc/logrotate.d/fabcelery-{self.name}"

    @property
    def unit_name(self) -> str:
        return f"{self.name}-supervisord.service"

    @property
    def unit_file(self) -> str:
        return f"/etc/systemd/system/{self.unit_name}"

    # celery programs
    @property
    def worker_log(self) -> str:
        return f"/var/log/celery/{self.name}-worker.log"

    def pool_log(self, pool: str) -> str:
        return of_pool(self.worker_log, pool)

    @property
    def beat_log(self) -> str:
        return f"/var/log/celery/{self.name}-beat.log"

    @property
    def run_dir(self) -> str:
        """Writable by the project user; holds beat's pid file. Made at every start by the unit."""
        return f"/run/{self.name}-celery"

    @property
    def run_dirs(self) -> tuple[str, str]:
        return self.supervisor_run_dir, self.run_dir

    @property
    def beat_pid(self) -> str:
        return f"{self.run_dir}/celerybeat.pid"

    @property
    def state_dir(self) -> str:
        """Beat's schedule: per project, not the seed's world-writable /tmp."""
        return f"/var/lib/celery/{self.name}"

    @property
    def beat_schedule(self) -> str:
        return f"{self.state_dir}/celerybeat-schedule"

    # what fabcelery keeps for itself on the server
    @property
    def fabcelery_dir(self) -> str:
        return f"/var/lib/fabcelery/{self.name}"

    @property
    def python_stamp(self) -> str:
        """The pip requirements last installed, so an unchanged deploy skips pip."""
        return f"{self.fabcelery_dir}/python-requirements.txt"

    @property
    def pending_apply(self) -> str:
        """What a deploy installed and supervisord has not applied yet (config files, a line
        each; `virtualenv` when pip changed it): a deploy cut off in between leaves it, and the
        next deploy applies those changes as if it had made them (tasks/configs.py: with_pending)."""
        return f"{self.fabcelery_dir}/pending-apply"

    @property
    def installed_packages(self) -> str:
        """The Debian packages a deploy installed, a name a line: `fab undeploy --purge` takes only those."""
        return f"{self.fabcelery_dir}/installed-packages"

    @property
    def created_virtualenv(self) -> str:
        """There when a deploy created the virtualenv: `fab undeploy --purge` may then remove it."""
        return f"{self.fabcelery_dir}/created-virtualenv"

    @property
    def settings_local(self) -> str:
        return f"{self.project.path}/{self.name}/settings_local.py"

    @property
    def requirements(self) -> str | None:
        if not self.project.requirements:
            return None
        return f"{self.project.path}/{self.project.requirements}"

    @property
    def venv_bin(self) -> str:
        return f"{self.project.virtualenv}/bin"


# logrotate reads every file of /etc/logrotate.d, hidden or not (3.22, checked): a file staged
# there would be read twice by a logrotate run meanwhile. Staged in /etc, the same file system.
STAGE_ELSEWHERE = {"/etc/logrotate.d": "/etc"}


def stage_path(target: str, run: str) -> str:
    """The hidden name a new file is staged under beside its target: `.NAME.fabcelery-new.RUN`,
    RUN unique to the run (two runs never stage to the same name)."""
    directory, _, base = target.rpartition("/")
    return f"{STAGE_ELSEWHERE.get(directory, directory)}/.{base}.fabcelery-new.{run}"


def of_pool(path: str, pool: str) -> str:
    """A pool's file: `path` itself for the pool named celery (the name it always had), else
    `path` with -POOL before its extension (NAME-celeryd.conf: NAME-celeryd-POOL.conf)."""
    if pool == DEFAULT_POOL:
        return path
    stem, _, extension = path.rpartition(".")
    return f"{stem}-{pool}.{extension}"
