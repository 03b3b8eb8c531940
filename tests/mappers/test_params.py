import pytest

from mappers.params import decode_form, decode_parts, lower_keys, phone_number


@pytest.mark.parametrize("encoded, charset, expected", [
    (b"", None, {}),
    (b"a=1&b=2", None, {"a": "1", "b": "2"}),
    (b"a=1&a=2", None, {"a": "1"}),
    (b"a&b=", None, {"a": "", "b": ""}),
    (b"&&a=1&", None, {"a": "1"}),
    (b"text=hello+world%21", None, {"text": "hello world!"}),
    (b"msisdn=%2B4915112345678", None, {"msisdn": "+4915112345678"}),
    (b"text=%C3%A4%E2%82%AC", None, {"text": "ä€"}),
    (b"text=%E4", None, {"text": "ä"}),
    (b"text=%80", None, {"text": "€"}),
    (b"text=\xe4", None, {"text": "ä"}),
    (b"text=%E4", "iso-8859-1", {"text": "ä"}),
    (b"text=%A4", "iso-8859-15", {"text": "€"}),
    (b"text=%C3%A4", "no-such-charset", {"text": "ä"}),
    (b"text=%E4", "utf-8\x00x", {"text": "ä"}),  # not a charset name at all: read as undeclared
    (b"text=%81", None, {"text": "\ufffd"}),
    (b"a=b=c", None, {"a": "b=c"}),
    (b"=x", None, {"": "x"}),
    (b"\xef\xbb\xbfMessageSid=SM1&MessageStatus=delivered", None, {"MessageSid": "SM1", "MessageStatus": "delivered"}),
    # Declared codecs that fail, or yield lone surrogates PostgreSQL cannot store, fall back.
    (b"x=%FF%FE", "punycode", {"x": "\xff\xfe"}),
    (b"Body=%2B2AA-", "utf-7", {"Body": "+2AA-"}),
    (b"v=%5Cud800", "unicode_escape", {"v": "\\ud800"}),
    (b"v=%C3%A4", "base64", {"v": "ä"}),
    # A 16-bit charset is the text's alone: names, ids and numbers beside it stay ASCII.
    (b"Body=%00H%00i%20%AC&SmsSid=SM12&From=%2B4915112345678", "UTF-16BE",
     {"Body": "Hi€", "SmsSid": "SM12", "From": "+4915112345678"}),
    (b"Body=%00H%00i&SmsSid=SM12", "UCS-2", {"Body": "Hi", "SmsSid": "SM12"}),
    (b"message=%04%1F%04%40%048&shortcode=12345", "ucs2", {"message": "При", "shortcode": "12345"}),
    (b"Body=%FF%FEH%00i%00", "utf-16", {"Body": "Hi"}),
    (b"Body=%00H%00i", "utf-16", {"Body": "Hi"}),  # no byte order mark: big-endian (RFC 2781)
    (b"Body=%00H%00i", "UCS-2LE", {"Body": "\u4800\u6900"}),
    (b"message=%4F%60%59%7D", "UCS-2", {"message": "你好"}),  # bytes that also read as ASCII
    (b"message=%30%6F%30%44", "UCS-2", {"message": "はい"}),
    (b"message=%09%27%09%28%09%4D", "UCS-2", {"message": "धन्"}),  # high bytes 0x09: tab in ASCII
    (b"message=%00H%00i%00%20%D8%3D", "UCS-2", {"message": "Hi \ufffd"}),  # a part cut in a surrogate pair
    (b"message=%00H%00", "UCS-2", {"message": "H\ufffd"}),  # an odd byte
    # UCS-2 honours a byte order mark as UTF-16 does; an explicit order drops a matching one.
    (b"message=%FF%FEH%00i%00", "UCS-2", {"message": "Hi"}),
    (b"message=%FE%FF%00H%00i", "UCS-2", {"message": "Hi"}),
    (b"message=%FE%FF%00H%00i", "UTF-16BE", {"message": "Hi"}),
    (b"message=%FF%FEH%00i%00", "UCS-2LE", {"message": "Hi"}),
    # UTF-32 too is big-endian without a byte order mark (Unicode, section 3.10), whatever the machine.
    (b"message=%00%00%00H%00%00%00i", "UTF-32", {"message": "Hi"}),
    (b"message=%FF%FE%00%00H%00%00%00i%00%00%00", "UTF-32", {"message": "Hi"}),
    (b"message=%00%00%FE%FF%00%00%00H", "UTF-32", {"message": "H"}),
])
def test_decode_form_reads_fields_in_the_encoding_they_came_in(encoded, charset, expected):
    assert decode_form(encoded, charset) == expected


@pytest.mark.parametrize("raw, expected", [
    ("+4915112345678", "+4915112345678"),
    (" 4915112345678", "+4915112345678"),  # a '+' sent un-encoded arrives as a space
    (" 4915112345678 ", "+4915112345678"),
    ("4915112345678", "4915112345678"),
    (" 12345", "+12345"),
    (" ACME", "ACME"),  # an alphanumeric sender is not a number
    (" ²345", "²345"),
    ("   ", None),
    ("", None),
    (None, None),
])
def test_phone_number_restores_a_plus_read_as_a_space(raw, expected):
    assert phone_number(raw) == expected


@pytest.mark.parametrize("params, expected", [
    ({"MessageSid": "SM1", "To": "+1"}, {"messagesid": "SM1", "to": "+1"}),
    ({"status": "delivered", "STATUS": "failed"}, {"status": "delivered"}),  # the first of a name wins
    ({"Status": "failed", "status": "delivered"}, {"status": "failed"}),
    ({}, {}),
])
def test_lower_keys_matches_names_ignoring_case_and_keeps_the_first(params, expected):
    assert lower_keys(params) == expected


def test_a_16_bit_charset_applies_to_the_text_parameters_a_vendor_declares():
    assert decode_form(b"sms_text=%00H%00i&msgid=ab12", "UCS-2", frozenset({"sms_text"})) == {
        "sms_text": "Hi", "msgid": "ab12"}


@pytest.mark.parametrize("parts, expected", [
    ([("Body", "Grüße".encode(), None)], {"Body": "Grüße"}),
    ([("Body", b"Gr\xfc\xdfe", None)], {"Body": "Grüße"}),  # not UTF-8: Windows-1252
    ([("Body", b"\x80", None)], {"Body": "€"}),
    ([("Body", b"Gr\xfc\xdfe", "ISO-8859-1")], {"Body": "Grüße"}),
    ([("Body", b"\xa4", "iso-8859-15")], {"Body": "€"}),  # a part's own charset, not werkzeug's four
    ([("Body", "ä".encode(), "no-such-charset")], {"Body": "ä"}),
    ([("Body", b"\xe4", "a\x00b")], {"Body": "ä"}),
    ([("Body", b"\x00H\x00i", "UCS-2"), ("SmsSid", b"SM1", None)], {"Body": "Hi", "SmsSid": "SM1"}),
    ([("Body", b"\xff\xfeH\x00i\x00", "UCS-2")], {"Body": "Hi"}),
    ([("a", b"1", None), ("b", b"2", None), ("a", b"3", None)], {"a": "1", "b": "2"}),  # the first wins
    ([], {}),
])
def test_decode_parts_reads_each_part_in_its_declared_charset_else_utf8_else_cp1252(parts, expected):
    assert decode_parts(parts) == expected
