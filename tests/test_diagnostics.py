import json

from sleepy_tui.diagnostics import (compile_signature, normalize_message, parse_rustc_json, signature,
                                    panic_signature)


def _diag(message, code=None, level="error", line=3):
    return json.dumps({"$message_type": "diagnostic", "message": message, "code": {"code": code} if code else None,
                       "level": level, "spans": [{"is_primary": True, "line_start": line, "column_start": 5}],
                       "rendered": f"{level}: {message}\n"})


def test_parses_records_and_skips_noise():
    stderr = "\n".join([_diag("borrow of moved value: `v`", "E0382"), "not json", "{broken",
                        _diag("unused variable: `x`", None, "warning", 7), _diag("aborting due to 1 previous error")])
    diags = parse_rustc_json(stderr)
    assert [(d.level, d.code, d.line) for d in diags] == [("error", "E0382", 3), ("warning", None, 7)]
    assert diags[0].rendered.startswith("error: borrow of moved value")


def test_signature_drops_identifiers_types_and_numbers():
    a = parse_rustc_json(_diag("borrow of moved value: `readings`", "E0382"))[0]
    b = parse_rustc_json(_diag("borrow of moved value: `self.items`", "E0382"))[0]
    assert signature(a) == signature(b) == "E0382:borrow_of_moved_value"
    c = parse_rustc_json(_diag("the trait bound `Point: Clone` is not satisfied", "E0277"))[0]
    assert signature(c) == "E0277:the_trait_bound_is_not_satisfied"
    assert normalize_message("expected 3 arguments, found 2") == "expected_arguments_found"


def test_compile_signature_uses_first_error_and_handles_codeless():
    diags = parse_rustc_json("\n".join([_diag("unused", None, "warning"), _diag("expected one of `;` or `}`")]))
    assert compile_signature(diags) == "error:expected_one_of_or"
    assert compile_signature([]) == "compile_error:unknown"


def test_panic_signatures():
    assert panic_signature("assertion `left == right` failed\n left: 1") == "test_failure:assert_eq"
    assert panic_signature("called `Option::unwrap()` on a `None` value") == "test_failure:unwrap_none"
    assert panic_signature("index out of bounds: the len is 3") == "test_failure:index_out_of_bounds"
    assert panic_signature("thread panicked at src/main.rs:3:5:\nboom") == "test_failure:panic"
