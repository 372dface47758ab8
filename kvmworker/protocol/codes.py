"""The return-code table of INTERFACE §2: every code and its exact message text."""

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    LOGIN_FAILED = 10001
    UNKNOWN_USER = 10002
    INVALID_REQUEST = 20001
    UNKNOWN_HANDLER = 20002
    UNKNOWN_COMMAND = 20003
    UNAUTHENTICATED = 20004
    EXPIRED = 20005
    BUSY = 20006
    UNSUPPORTED_NETWORK_TYPE = 30001
    NAMESPACE_NOT_FOUND = 30002
    DEVICE_NOT_FOUND = 30003
    DEVICE_OPERATION_NOT_ALLOWED = 30004
    DEVICE_NAME_TOO_LONG = 30005
    INVALID_PARAMETER = 30006
    VM_NOT_FOUND = 30007
    VM_SHUTDOWN_FAILED = 30008
    HYPERVISOR_UNAVAILABLE = 30009
    VOLUME_NOT_FOUND = 30010
    MIGRATION_FAILED = 30012
    CANCELLED = 30013
    SNAPSHOT_NOT_FOUND = 30011
    CPU_INFO_FAILED = 40001
    MEMORY_INFO_FAILED = 40101
    STORAGE_INFO_FAILED = 40201
    NETWORK_INFO_FAILED = 40301
    HARDWARE_INFO_FAILED = 40401
    SERVICE_INFO_FAILED = 40501
    VM_INFO_FAILED = 40502
    INTERNAL_ERROR = 99999
    UNKNOWN_OUTCOME = -1

    @property
    def msg(self) -> str:
        return MESSAGES[self]


MESSAGES: dict[Code, str] = {
    Code.OK: "成功",
    Code.LOGIN_FAILED: "登录失败",
    Code.UNKNOWN_USER: "用户名错误",
    Code.INVALID_REQUEST: "无效的请求",
    Code.UNKNOWN_HANDLER: "不支持的处理器",
    Code.UNKNOWN_COMMAND: "不支持的命令",
    Code.UNAUTHENTICATED: "认证失败",
    Code.EXPIRED: "请求已过期",
    Code.BUSY: "服务繁忙",
    Code.UNSUPPORTED_NETWORK_TYPE: "不支持的网络类型",
    Code.NAMESPACE_NOT_FOUND: "网络命名空间不存在",
    Code.DEVICE_NOT_FOUND: "网络设备不存在",
    Code.DEVICE_OPERATION_NOT_ALLOWED: "不支持的设备操作",
    Code.DEVICE_NAME_TOO_LONG: "网络设备名称过长",
    Code.INVALID_PARAMETER: "无效的设备参数值",
    Code.VM_NOT_FOUND: "虚拟机不存在",
    Code.VM_SHUTDOWN_FAILED: "虚拟机关机失败",
    Code.HYPERVISOR_UNAVAILABLE: "hypervisor连接失败",
    Code.VOLUME_NOT_FOUND: "存储卷不存在",
    Code.MIGRATION_FAILED: "虚拟机迁移失败",
    Code.CANCELLED: "操作已取消",
    Code.SNAPSHOT_NOT_FOUND: "快照不存在",
    Code.CPU_INFO_FAILED: "获取CPU信息失败",
    Code.MEMORY_INFO_FAILED: "获取内存信息失败",
    Code.STORAGE_INFO_FAILED: "获取存储信息失败",
    Code.NETWORK_INFO_FAILED: "获取网络信息失败",
    Code.HARDWARE_INFO_FAILED: "获取机器硬件信息失败",
    Code.SERVICE_INFO_FAILED: "获取系统服务信息失败",
    Code.VM_INFO_FAILED: "获取虚拟机信息失败",
    Code.INTERNAL_ERROR: "系统异常,请稍后重试",
    Code.UNKNOWN_OUTCOME: "未知异常",
}
