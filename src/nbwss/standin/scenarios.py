"""The guide's notification scenarios, played on the stand-in REST API's model.

Each `Step` mutates a `StandinApi` the way NetBackup's catalog changes at that moment,
and carries what the guide says NBWSS reports for it (the examples of spec section 3:
`vmware-a` .. `vmware-g`, `restore-job-done`, `image-delete`), with the guide's values.
A test or the demo plays the steps in order, letting the poller see each one, and
compares what was queued with `expected`.

All epoch values are the guide's plus `shift` seconds (0 keeps them verbatim; the demo
shifts them to today so that a 30-day image window still sees the images). The
`lastUpdateTime` of jobs is the stand-in's clock, as on a real master.

The catalog changes in the API's real shapes (records.py): jobs carry the schema's
`scheduleType` `FULL_BACKUP` and `policyType` `VMWARE`; images the display text
`VMware` and no createdTime, so a CREATE's createdTime is backupTime +
elapsedTimeSeconds (set here to give the guide's value) and an UPDATE's is when the
poller saw it, which no scenario can predict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nbwss import outbox
from nbwss.standin.model import StandinApi
from nbwss.standin.records import iso
from nbwss.store import Store

Notification = tuple[str, dict[str, Any]]

MASTER = "masterserver2.domain.com"
VM = "DummyTestVM"
# The guide's values (spec/examples/vmware-*.json, restore-job-done.json, image-delete.json).
PARENT_START, SNAPSHOT_START, BACKUP_START = 1459829674, 1459829686, 1459829698
NEW_IMAGE_TIME, NEW_IMAGE_CREATED = 1459811698, 1459829720
OLD_IMAGE_TIME, OLD_IMAGE_UPDATED = 1459811686, 1459829721
RESTORE_START = 1459830185
DELETED_IMAGE_TIME, DELETED_IMAGE_CLIENT = 1458601200, "localhost"


@dataclass(frozen=True, slots=True)
class Step:
    """One moment of a scenario: how the catalog changes, and what the guide reports."""

    name: str
    apply: Callable[[StandinApi], None]
    expected: list[Notification] = field(default_factory=list)
    objects: frozenset[str] = frozenset()  # which polls must run to see it


def _job(job_id: int, parent: int, client: str, start: int, state: str, **extra: Any
         ) -> dict[str, Any]:
    return {"scheduleType": "ST_FULL", "clientName": client, "status": 0, "startTime": start,
            "state": state, "policyName": extra.get("policyName", "vmware2"),
            "parentJobId": parent, "jobId": job_id,
            "policyType": extra.get("policyType", "VMWARE"),
            "jobType": extra.get("jobType", "BACKUP")}


def _image(client: str, backup_time: int, created: int, operation: str, client_type: str
           ) -> dict[str, Any]:
    return {"clientType": client_type, "clientName": client, "backupTime": backup_time,
            "createdTime": created, "operationId": operation,
            "backupId": f"{client}_{backup_time}"}


class GuideScenarios:
    """The guide's VMware backup (A..G), a restore and an image deletion, `shift`ed."""

    def __init__(self, shift: int = 0) -> None:
        self.shift = shift

    def t(self, guide_epoch: int) -> int:
        return guide_epoch + self.shift

    def backup_id(self, client: str, guide_epoch: int) -> str:
        return f"{client}_{self.t(guide_epoch)}"

    def prepare(self, api: StandinApi) -> None:
        """The catalog before the scenario: the two older images it later updates/deletes."""
        api.upsert_image(self.backup_id(VM, OLD_IMAGE_TIME), policyType="VMware",
                         policyName="vmware2", numCopies=1)
        api.upsert_image(self.backup_id(DELETED_IMAGE_CLIENT, DELETED_IMAGE_TIME),
                         policyType="VMware", policyName="vmware2", numCopies=1)

    def _job_step(self, name: str, job_id: int, parent: int, client: str, start: int,
                  state: str, **extra: Any) -> Step:
        def apply(api: StandinApi) -> None:
            end = {"endTime": iso(api.clock())} if state == "DONE" else {}
            api.upsert_job(
                job_id, parentJobId=parent, clientName=client, startTime=iso(self.t(start)),
                state=state, status=0, scheduleType="FULL_BACKUP",
                policyName=extra.get("policyName", "vmware2"),
                policyType=extra.get("policyType", "VMWARE"),
                jobType=extra.get("jobType", "BACKUP"), **end,
            )

        expected = _job(job_id, parent, client, self.t(start), state, **extra)
        return Step(name, apply, [("JOB", expected)], frozenset({"JOB"}))

    def vmware_backup(self) -> list[Step]:
        """Examples A..G: parent 144, snapshot 145, backup 146 ACTIVE; images; the DONEs."""
        return [
            self._job_step("A", 144, 144, MASTER, PARENT_START, "ACTIVE"),
            self._job_step("B", 145, 144, VM, SNAPSHOT_START, "ACTIVE"),
            self._job_step("C", 146, 145, VM, BACKUP_START, "ACTIVE"),
            self._images_step(),
            self._job_step("E", 146, 145, VM, BACKUP_START, "DONE"),
            self._job_step("F", 145, 144, VM, SNAPSHOT_START, "DONE"),
            self._job_step("G", 144, 144, MASTER, PARENT_START, "DONE"),
        ]

    def _images_step(self) -> Step:
        """Example D: the backup's image is written; an older image gains a copy."""

        def apply(api: StandinApi) -> None:
            api.upsert_image(self.backup_id(VM, NEW_IMAGE_TIME), policyType="VMware",
                             policyName="vmware2", numCopies=1,
                             elapsedTimeSeconds=NEW_IMAGE_CREATED - NEW_IMAGE_TIME)
            api.upsert_image(self.backup_id(VM, OLD_IMAGE_TIME), numCopies=2)

        expected = [
            ("IMAGE", _image(VM, self.t(NEW_IMAGE_TIME), self.t(NEW_IMAGE_CREATED), "CREATE",
                             "VMWARE")),
            ("IMAGE", _image(VM, self.t(OLD_IMAGE_TIME), self.t(OLD_IMAGE_UPDATED), "UPDATE",
                             "VMWARE")),
        ]
        return Step("D", apply, expected, frozenset({"IMAGE"}))

    def restore(self) -> list[Step]:
        """restore-job-done: job 147, no policy, finished between two polls."""
        return [self._job_step("restore", 147, 147, MASTER, RESTORE_START, "DONE",
                               policyName="", policyType="STANDARD", jobType="RESTORE")]

    def image_deletion(self) -> list[Step]:
        """image-delete: the older localhost image expires out of the catalog.

        Its createdTime is when the poller saw it go (the catalog keeps no record of a
        deleted image), so `expected` carries the guide's and a comparison ignores it.
        """
        backup_id = self.backup_id(DELETED_IMAGE_CLIENT, DELETED_IMAGE_TIME)

        def apply(api: StandinApi) -> None:
            api.delete_image(backup_id)

        expected = _image(DELETED_IMAGE_CLIENT, self.t(DELETED_IMAGE_TIME),
                          self.t(1459832492), "DELETE", "VMWARE")
        return [Step("delete", apply, [("IMAGE", expected)], frozenset({"IMAGE"}))]

    def all_steps(self) -> list[Step]:
        return self.vmware_backup() + self.restore() + self.image_deletion()


def comparable(notification: Notification) -> Notification:
    """A notification without the one value no scenario can predict: the createdTime of
    an UPDATE or a DELETE (when the poller saw it)."""
    obj, data = notification
    if data.get("operationId") in ("UPDATE", "DELETE"):
        data = {k: v for k, v in data.items() if k != "createdTime"}
    return obj, data


def outbox_rows(store: Store, objects: Iterable[str] = ("JOB", "IMAGE")) -> list[Notification]:
    """Every queued (object, data) in seq order, to compare with the steps' `expected`."""
    wanted = set(objects)
    return [(event.object, json.loads(event.data))
            for event in outbox.read_events(store, 0, 1 << 40) if event.object in wanted]
