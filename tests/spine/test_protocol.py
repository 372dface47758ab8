"""The wire models, the code table and guarded decoding, without a broker."""

from __future__ import annotations

import pytest

from kvmworker.dispatch.commands import HandlerRegistry, command
from kvmworker.protocol.codec import decode_body
from kvmworker.protocol.codes import MESSAGES, Code
from kvmworker.protocol.envelope import Envelope, Reply
from kvmworker.protocol.errors import ERROR_FOR_CODE, InvalidRequest

CONTRACT_TABLE = {
    0: "成功", 10001: "登录失败", 10002: "用户名错误", 30001: "不支持的网络类型", 30002: "网络命名空间不存在",
    30003: "网络设备不存在", 30004: "不支持的设备操作", 30005: "网络设备名称过长", 30006: "无效的设备参数值",
    30007: "虚拟机不存在", 30008: "虚拟机关机失败", 30009: "hypervisor连接失败", 30010: "存储卷不存在",
    30013: "操作已取消", 40001: "获取CPU信息失败",
    40101: "获取内存信息失败", 40201: "获取存储信息失败", 40301: "获取网络信息失败", 40401: "获取机器硬件信息失败",
    40501: "获取系统服务信息失败", 40502: "获取虚拟机信息失败", 99999: "系统异常,请稍后重试", -1: "未知异常",
    20001: "无效的请求", 20002: "不支持的处理器", 20003: "不支持的命令", 20004: "认证失败", 20005: "请求已过期",
    20006: "服务繁忙",
    30011: "快照不存在", 30012: "虚拟机迁移失败",
}  # fmt: skip


def test_the_code_table_is_exactly_the_contract_table():
    assert {int(code): text for code, text in MESSAGES.items()} == CONTRACT_TABLE


def test_every_error_code_except_success_unknown_and_the_reserved_busy_has_an_exception_class():
    missing = set(Code) - set(ERROR_FOR_CODE) - {Code.OK, Code.UNKNOWN_OUTCOME}
    assert missing == {Code.BUSY}, "20006 is answered nowhere (docs/interface.md §2); a class for it would be dead code"
    assert all(cls.code == code for code, cls in ERROR_FOR_CODE.items())


def test_a_reply_for_an_error_keeps_details_out_of_msg():
    reply = Reply.from_error(InvalidRequest("the body is broken", field="data"))
    assert reply.model_dump() == {
        "code": 20001,
        "msg": "无效的请求",
        "data": {"detail": "the body is broken", "field": "data"},
    }


def test_the_documented_example_is_a_valid_envelope_and_wire_keeps_it_unchanged():
    body = {
        "command": "create",
        "handler": "NetworkHandler",
        "data": {"network_id": "5b0503ba-1af4-11ea-baa2-000c2902e179", "network_type": "vlan",
                 "physical_interface": "ens224", "vlan_id": "1001"},
    }  # fmt: skip
    assert Envelope.model_validate(body).wire() == body


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"{}", "application/x-python-serialize", "content type"),
        (b"{}", None, "content type"),
        (b"x" * 2048, "application/json", "limit"),
        (b"[" * 40 + b"]" * 40, "application/json", "deeper"),
        (b'{"a": 1' + b"0" * 100 + b"}", "application/json", "too large"),
        (b'{"a": Infinity}', "application/json", "not JSON"),
    ],
)
def test_decoding_refuses_what_a_hostile_publisher_could_send(body, content_type, expected):
    with pytest.raises(InvalidRequest, match=expected):
        decode_body(body, content_type, max_bytes=1024)


def test_json_with_a_charset_parameter_is_accepted():
    assert decode_body(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}


class Twice:
    name = "Twice"

    @command(mutates=False)
    def a(self, data, ctx):
        return {}


def test_a_handler_registered_twice_is_refused():
    registry = HandlerRegistry([Twice()])
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Twice())
