"""The regular expressions behind the published patterns mean what Python's own parsers mean."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmworker.protocol import patterns

RANGES = [(0, 255), (1, 4094), (68, 65535), (1, 512), (16, 16 * 1024 * 1024), (1, 16777215), (7, 7), (9, 10), (0, 128)]


@pytest.mark.parametrize(("lo", "hi"), RANGES)
def test_a_decimal_range_matches_exactly_the_numbers_in_it_without_leading_zeros(lo, hi):
    regex = re.compile(f"(?:{patterns.decimal_range(lo, hi)})")
    checked = [*range(min(hi * 2 + 20, 70000)), *(hi - k for k in range(50)), *(hi + k for k in range(50))]
    wrong = [n for n in checked if n >= 0 and bool(regex.fullmatch(str(n))) != (lo <= n <= hi)]
    assert wrong == []
    assert not regex.fullmatch(f"0{max(lo, 1)}")


@settings(max_examples=300, derandomize=True, deadline=None)
@given(address=st.ip_addresses(), prefix=st.integers(0, 130), form=st.sampled_from(["compressed", "exploded"]))
def test_the_cidr_pattern_accepts_an_address_with_a_prefix_exactly_when_ipaddress_does(address, prefix, form):
    text = f"{getattr(address, form)}/{prefix}"
    try:
        ipaddress.ip_interface(text)
        python_says = True
    except ValueError:
        python_says = False
    assert bool(re.fullmatch(f"(?:{patterns.CIDR})", text)) == python_says, text


# (a zone id, fe80::1%eth0, is deliberately not an address to assign: the Cidr type refuses it)
AWKWARD = ["::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::ffff:1.2.3.4", "1:2:3:4:5:6:1.2.3.4"]
AWKWARD += ["1::2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "1:::2", ":1::", "1:2:3:4:5:6:7:8::", "12345::", "1:2:3:4:5:6:7::8"]
AWKWARD += ["::1.2.3", "1.2.3.4", "01.2.3.4", "1.2.3.256", "FD00::A"]


@pytest.mark.parametrize("text", AWKWARD)
def test_the_ipv6_and_ipv4_patterns_agree_with_ipaddress_on_the_awkward_forms(text):
    for regex, parse in ((patterns.IPV6, ipaddress.IPv6Address), (patterns.IPV4, ipaddress.IPv4Address)):
        try:
            parse(text)
            python_says = True
        except ValueError:
            python_says = False
        assert bool(re.fullmatch(f"(?:{regex})", text)) == python_says, (text, parse.__name__)


def test_an_anchored_pattern_refuses_a_trailing_newline_even_with_pythons_search():
    pattern = patterns.schema_pattern("[a-z]+")
    assert re.search(pattern, "eth") and not re.search(pattern, "eth\n") and not re.search(pattern, "eth\nx")
