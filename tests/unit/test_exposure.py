import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from osel.config import ScopeSettings
from osel.exposure import (
    Permit,
    address_int,
    covered,
    diff,
    ip_version,
    is_internet_prefix,
    normalize_protocol,
    rule_permits,
)
from osel.model import AddressGroup, Rule


def permit(proto, low, high, remote="0.0.0.0/0"):
    return Permit(proto, low, high, remote, is_internet_prefix(remote))


def test_internet_prefixes():
    assert is_internet_prefix("0.0.0.0/0")
    assert is_internet_prefix("::/0")
    assert is_internet_prefix("8.8.8.0/24")
    assert not is_internet_prefix("10.1.0.0/16")
    assert not is_internet_prefix("192.168.0.0/16")
    assert not is_internet_prefix("fd00::/8")
    assert is_internet_prefix("not-a-prefix")


def test_protocol_names_and_numbers_compare_equal():
    assert normalize_protocol("6") == "tcp"
    assert normalize_protocol("TCP") == "tcp"
    assert normalize_protocol("icmpv6") == "ipv6-icmp"
    assert normalize_protocol(None) is None


def test_range_covered_by_union_of_ranges():
    assert covered(permit("tcp", 20, 30), [permit("tcp", 10, 25), permit("tcp", 26, 40)])
    assert not covered(permit("tcp", 20, 30), [permit("tcp", 10, 25), permit("tcp", 27, 40)])


def test_any_protocol_covers_tcp_but_not_the_reverse():
    assert covered(permit("tcp", 22, 22), [permit(None, 0, 65535)])
    assert not covered(permit(None, 0, 65535), [permit("tcp", 0, 65535)])


def test_wider_remote_covers_narrower():
    assert covered(permit("tcp", 22, 22, "10.0.0.0/24"), [permit("tcp", 22, 22, "10.0.0.0/8")])
    assert not covered(permit("tcp", 22, 22, "0.0.0.0/0"), [permit("tcp", 22, 22, "10.0.0.0/8")])
    assert covered(permit("tcp", 22, 22, "group:x"), [permit("tcp", 22, 22, "0.0.0.0/0")])


def test_diff_reports_only_new_reach():
    before = [permit("tcp", 1, 1000)]
    opened, closed = diff(before, [*before, permit("tcp", 22, 22)])
    assert opened == [] and closed == []
    opened, closed = diff(before, [permit("tcp", 1, 1000), permit("tcp", 2000, 2000)])
    assert [p.port_min for p in opened] == [2000] and closed == []
    opened, closed = diff(before, [])
    assert closed == before and opened == []


def test_rule_permits_follow_ethertype_direction_and_remote():
    rule = Rule("r", "sg", "ingress", "IPv4", "tcp", 22, 22, None)
    assert [p.remote for p in rule_permits(rule, 4, lambda _: None)] == ["0.0.0.0/0"]
    assert rule_permits(rule, 6, lambda _: None) == []
    egress = Rule("e", "sg", "egress", "IPv4", "tcp", 22, 22, "0.0.0.0/0")
    assert rule_permits(egress, 4, lambda _: None) == []
    grp = Rule("g", "sg", "ingress", "IPv4", None, None, None, None, remote_group_id="other")
    (p,) = rule_permits(grp, 4, lambda _: None)
    assert p.remote == "group:other" and not p.internet and (p.port_min, p.port_max) == (0, 65535)


def test_address_group_remote_resolves_to_its_cidrs():
    rule = Rule("a", "sg", "ingress", "IPv4", "tcp", 443, 443, remote_address_group_id="ag")
    ag = AddressGroup("ag", ("10.0.0.0/8", "198.18.0.0/15", "2001:db8::/32"))
    permits = rule_permits(rule, 4, lambda _: ag)
    assert [(p.remote, p.internet) for p in permits] == [
        ("10.0.0.0/8", False),
        ("198.18.0.0/15", True),
    ]


_ADDRESSES = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded),
    st.ip_addresses(v=6).map(lambda a: f"{a}%eth0"),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.text(alphabet="0123456789abcdef.:/%x ", max_size=45),
)


@settings(max_examples=2000, deadline=None)
@given(_ADDRESSES)
def test_address_parsing_agrees_with_ipaddress(text: str) -> None:
    """The fast parser (inet_pton) gives what `ipaddress` gives, or defers to it."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    plain = address_int(text)
    if plain is not None:
        assert ip is not None and plain == (ip.version, int(ip))
    elif ip is not None:
        assert "%" in text  # only scoped IPv6 is left to ipaddress
    try:
        expected: int | None = ipaddress.ip_network(text, strict=False).version
    except ValueError:
        expected = None
    assert ip_version(text) == expected


@settings(max_examples=500, deadline=None)
@given(_ADDRESSES)
def test_scope_classify_agrees_with_ipaddress(text: str) -> None:
    scope = ScopeSettings.model_validate(
        {
            "include_cidrs": ["10.0.0.0/8", "2001:db8::/32", "0.0.0.0/1"],
            "exclude_cidrs": ["10.1.0.0/16", "2001:db8:1::/48"],
            "ipv6": "scan",
        }
    )
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        assert scope.classify(text) == f"not an IP address: {text!r}"
        return
    excluded = [n for n in scope.exclude_cidrs if n.version == ip.version and ip in n]
    included = any(n.version == ip.version and ip in n for n in scope.include_cidrs)
    expected = (
        f"excluded by scope.exclude_cidrs {excluded[0]}"
        if excluded
        else None
        if included
        else "not in scope.include_cidrs"
    )
    assert scope.classify(text) == expected
