"""The error hierarchy: every exception the worker raises on purpose carries its reply code.

Handlers raise these; exactly one function (``kvmworker.dispatch.replies.reply_for_exception``)
turns any exception into a ``{code, msg, data}`` reply.
"""

from __future__ import annotations

from typing import Any

from kvmworker.protocol.codes import Code


class KvmError(Exception):
    """An expected failure with a documented code. ``detail`` is English; ``msg`` stays the table text."""

    code: Code = Code.INTERNAL_ERROR

    def __init__(self, detail: str, *, field: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra or {}

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"detail": self.detail}
        if self.field is not None:
            data["field"] = self.field
        data.update(self.extra)
        return data


def _error(name: str, code: Code, doc: str) -> type[KvmError]:
    return type(name, (KvmError,), {"code": code, "__doc__": doc})


LoginFailed = _error("LoginFailed", Code.LOGIN_FAILED, "Wrong password, or the account is locked out.")
UnknownUser = _error("UnknownUser", Code.UNKNOWN_USER, "No such user.")
InvalidRequest = _error("InvalidRequest", Code.INVALID_REQUEST, "The envelope itself is malformed.")
UnknownHandler = _error("UnknownHandler", Code.UNKNOWN_HANDLER, "No handler of that name.")
UnknownCommand = _error("UnknownCommand", Code.UNKNOWN_COMMAND, "The handler has no such command.")
Unauthenticated = _error("Unauthenticated", Code.UNAUTHENTICATED, "Bad or missing signature or token.")
Expired = _error("Expired", Code.EXPIRED, "The message expired before it could run; it was not executed.")
UnsupportedNetworkType = _error("UnsupportedNetworkType", Code.UNSUPPORTED_NETWORK_TYPE, "Not flat or vlan.")
NamespaceNotFound = _error("NamespaceNotFound", Code.NAMESPACE_NOT_FOUND, "No such network namespace.")
DeviceNotFound = _error("DeviceNotFound", Code.DEVICE_NOT_FOUND, "No such network device or network.")
OperationNotAllowed = _error(
    "OperationNotAllowed", Code.DEVICE_OPERATION_NOT_ALLOWED, "Not allowed on that device, or unsupported here."
)
DeviceNameTooLong = _error("DeviceNameTooLong", Code.DEVICE_NAME_TOO_LONG, "Longer than IFNAMSIZ-1 (15 bytes).")
InvalidParameter = _error("InvalidParameter", Code.INVALID_PARAMETER, "A parameter has an invalid value.")
VmNotFound = _error("VmNotFound", Code.VM_NOT_FOUND, "No such VM.")
VmShutdownFailed = _error("VmShutdownFailed", Code.VM_SHUTDOWN_FAILED, "The VM did not shut down in time.")
HypervisorUnavailable = _error("HypervisorUnavailable", Code.HYPERVISOR_UNAVAILABLE, "Cannot reach libvirt.")
VolumeNotFound = _error("VolumeNotFound", Code.VOLUME_NOT_FOUND, "No such storage pool or volume.")
MigrationFailed = _error(
    "MigrationFailed", Code.MIGRATION_FAILED, "The migration failed; the VM still runs on the source only."
)
Cancelled = _error("Cancelled", Code.CANCELLED, "Cancelled (SystemHandler.cancel); the host is as before it.")
SnapshotNotFound = _error("SnapshotNotFound", Code.SNAPSHOT_NOT_FOUND, "No such snapshot of that VM.")
CpuInfoFailed = _error("CpuInfoFailed", Code.CPU_INFO_FAILED, "Reading CPU information failed.")
MemoryInfoFailed = _error("MemoryInfoFailed", Code.MEMORY_INFO_FAILED, "Reading memory information failed.")
StorageInfoFailed = _error("StorageInfoFailed", Code.STORAGE_INFO_FAILED, "Reading storage information failed.")
NetworkInfoFailed = _error("NetworkInfoFailed", Code.NETWORK_INFO_FAILED, "Reading network information failed.")
HardwareInfoFailed = _error("HardwareInfoFailed", Code.HARDWARE_INFO_FAILED, "Reading hardware information failed.")
ServiceInfoFailed = _error("ServiceInfoFailed", Code.SERVICE_INFO_FAILED, "Reading service states failed.")
VmInfoFailed = _error("VmInfoFailed", Code.VM_INFO_FAILED, "Reading VM information failed.")

# Code.BUSY (20006) has no class: nothing here refuses for load (docs/interface.md §2 says where load goes instead).
ERROR_FOR_CODE: dict[Code, type[KvmError]] = {
    cls.code: cls for cls in list(globals().values()) if isinstance(cls, type) and issubclass(cls, KvmError)
}
