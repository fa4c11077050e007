"""The stand-in's job and image records, in the shapes Veritas documents.

Jobs: the attributes of Veritas's example response to `GET /admin/jobs` (admin.yaml,
identical in 10.3, 10.5, 11.0 and 11.2; tests/fixtures/netbackup-api/
admin-jobs-example.json), plus `policyType`, which the schema lists but the example
lacks. Images: every attribute the `imageAttributes` schema requires (catalog.yaml, the
same 48 in 10.3 to 11.2), and nothing it does not name: there is no `backupId`,
`clientType`, `createdTime` or `lastUpdateTime`; the backup id is the record's `id`.
Values not given by the caller are neutral ones of the documented type (ours).
tests/fixtures/netbackup-api/README.md says where every field comes from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

Attributes = dict[str, Any]

NOT_ENDED: Final = "1970-01-01T00:00:00.000Z"  # our endTime of a running job (unverified)


def iso(epoch_seconds: float) -> str:
    """NetBackup's time format: UTC ISO 8601 with milliseconds and a ``Z``."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_job(job_id: int, now: str) -> Attributes:
    """A job's attributes as the example shows them (a finished IMAGEDELETE there;
    here a queued BACKUP until the caller says otherwise)."""
    return {
        "jobId": job_id, "parentJobId": 0, "activeProcessId": 0, "mainProcessId": 0,
        "jobType": "BACKUP", "jobSubType": "IMMEDIATE", "policyType": "STANDARD",
        "policyName": "", "scheduleType": "FULL_BACKUP", "scheduleName": "",
        "clientName": "", "controlHost": "", "jobOwner": "root", "jobGroup": "",
        "backupId": "", "sourceMediaId": "", "sourceStorageUnitName": "",
        "sourceMediaServerName": "", "destinationMediaId": "",
        "destinationStorageUnitName": "", "destinationMediaServerName": "",
        "dataMovement": "STANDARD", "streamNumber": 0, "copyNumber": 0, "priority": 0,
        "retentionLevel": 0, "compression": 0, "status": 0, "state": "QUEUED", "done": 0,
        "numberOfFiles": 0, "estimatedFiles": 0, "kilobytesTransferred": 0,
        "kilobytesToTransfer": 0, "transferRate": 0, "percentComplete": 0,
        "restartable": 0, "suspendable": 0, "resumable": 0, "killable": 1,
        "frozenImage": 0, "transportType": "LAN", "currentOperation": 0,
        "jobQueueReason": 0, "jobQueueResource": "", "robotName": "", "vaultName": "",
        "profileName": "", "sessionId": 0, "numberOfTapeToEject": 0, "submissionType": 0,
        "dumpHost": "", "instanceDatabaseName": "", "auditUserName": "",
        "auditDomainName": "", "auditDomainType": 0, "restoreBackupIDs": "",
        "startTime": now, "endTime": NOT_ENDED, "activeTryStartTime": now,
        "lastUpdateTime": now, "kilobytesDataTransferred": 0, "try": 1, "assetID": "",
        "assetDisplayableName": "", "workloadDisplayName": "", "elapsedTime": "PT0S",
        "activeElapsedTime": "PT0S", "childCount": 0, "jobPath": str(job_id),
    }


def new_image(client: str, backup_time: str, expiration: str) -> Attributes:
    """An image's attributes: the 48 the schema requires, of their documented types."""
    return {
        "policyType": "Standard", "clientName": client, "policyName": "",
        "scheduleType": "FULL", "backupCopyType": "DEFAULT", "backupTime": backup_time,
        "backupStatus": 0, "blockIncrementalFullTime": NOT_ENDED, "clientCharset": 0,
        "compression": False, "contentFile": "", "contentFileSize": "0",
        "contentFileCompressed": "NOT", "creator": "root", "dataClassification": "",
        "drMediaList": [], "elapsedTimeSeconds": 0, "encryption": "NONE",
        "expiration": expiration, "extendedSecurityInfo": False, "fileSystemOnly": False,
        "imageDumpLevel": 0, "imageType": "NORMAL", "jobId": 0, "kbytes": 0, "keyword": "",
        "kbytesDataTransferred": 0, "mpx": False, "numCopies": 1, "numFiles": 0,
        "numberFragments": 1, "originMasterServer": "", "pfiType": 0, "primaryCopy": 1,
        "providerGeneratedId": "", "proxyClient": "", "remoteExpirationDate": expiration,
        "retentionLevel": 1, "scheduleName": "", "slpVersion": 0, "slpCompleted": 0,
        "slpName": "", "tirExpirationDate": expiration, "version": 11, "vmType": "NONE",
        "streamNumber": 0, "streamAggregatedKbytes": -1, "streamAggregatedFiles": -1,
    }


def job_resource(attributes: Attributes, base: str) -> Attributes:
    """A job as a JSON:API resource, with the example's links."""
    job_id = attributes["jobId"]
    return {
        "links": {"self": {"href": f"/admin/jobs/{job_id}"},
                  "file-lists": {"href": f"{base}/admin/jobs/{job_id}/file-lists"},
                  "try-logs": {"href": f"{base}/admin/jobs/{job_id}/try-logs"}},
        "type": "job", "id": str(job_id), "attributes": dict(attributes),
    }


def image_resource(backup_id: str, attributes: Attributes) -> Attributes:
    """An image as a JSON:API resource: `links` (self), `type`, `id`, `attributes`."""
    return {"links": {"self": {"href": f"/catalog/images/{backup_id}"}}, "type": "image",
            "id": backup_id, "attributes": dict(attributes)}
