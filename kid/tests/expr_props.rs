//! Property tests of the expression parser: it never panics on any input, printing a tree then
//! parsing the text gives the same tree back, and a duration reads the same in a rule and in
//! `neronet.yaml`.

use nerokid::expr::{
    parse, parse_duration, parse_rule, CmpOp, Comparison, Expr, Pattern, Unit, Value,
};
use proptest::prelude::*;

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("runtime".to_string()),
        Just("loss".to_string()),
        Just("slurm.mem-per-cpu".to_string()),
        Just("learning rate".to_string()),
        Just("λ".to_string()),
        "[a-z_][a-z0-9_]{0,8}".prop_filter("not a reserved word", |s| s != "all"),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let unit = prop_oneof![
        Just(Unit::Seconds),
        Just(Unit::Minutes),
        Just(Unit::Hours),
        Just(Unit::Days),
        Just(Unit::Weeks)
    ];
    prop_oneof![
        (-1e6f64..1e6).prop_map(Value::Num),
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
            .prop_map(Value::Num),
        (
            (0u32..100000).prop_map(|n| f64::from(n) / 8.0),
            unit.clone()
        )
            .prop_map(|(n, u)| Value::Duration(n, u)),
        (0u32..100000).prop_map(|n| Value::Num(f64::from(n))),
        ((0u32..1000).prop_map(f64::from), unit).prop_map(|(n, u)| Value::Duration(n, u)),
        any::<String>()
            .prop_filter("no NUL", |s| !s.contains('\0'))
            .prop_map(Value::Text),
    ]
}

fn op() -> impl Strategy<Value = CmpOp> {
    prop_oneof![
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge),
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
    ]
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(Expr::All),
        prop_oneof![
            Just("crashed"),
            Just("running"),
            Just("finished"),
            Just("lost")
        ]
        .prop_map(|s| Expr::State(s.into())),
        (-1000i64..1000, -1000i64..1000).prop_map(|(a, b)| Expr::IdRange(a.min(b), a.max(b))),
        (-100000i64..100000).prop_map(|n| Expr::Id(n.to_string())),
        "[a-z][a-z0-9_-]{0,6}".prop_map(Expr::Id),
        "[ -~]{1,8}".prop_map(Expr::Id),
        (field(), op(), value()).prop_map(|(field, op, value)| Expr::Cmp(Comparison {
            field,
            op,
            value,
            regex: None,
            column: 0
        })),
        (field(), "[a-z0-9.^$]{0,6}").prop_map(|(field, re)| {
            let regex = Some(Pattern(regex::Regex::new(&re).unwrap()));
            Expr::Cmp(Comparison {
                field,
                op: CmpOp::Match,
                value: Value::Text(re),
                regex,
                column: 0,
            })
        }),
    ]
}

fn comparison() -> impl Strategy<Value = Expr> {
    (field(), op(), value()).prop_map(|(field, op, value)| {
        Expr::Cmp(Comparison {
            field,
            op,
            value,
            regex: None,
            column: 0,
        })
    })
}

fn rule_tree() -> impl Strategy<Value = Expr> {
    comparison().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Union),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

fn tree() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Union),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

/// Columns are where the parser found things; the printed text has other columns.
fn without_columns(e: &Expr) -> Expr {
    match e {
        Expr::Union(v) => Expr::Union(v.iter().map(without_columns).collect()),
        Expr::Or(v) => Expr::Or(v.iter().map(without_columns).collect()),
        Expr::And(v) => Expr::And(v.iter().map(without_columns).collect()),
        Expr::Not(x) => Expr::Not(Box::new(without_columns(x))),
        Expr::Cmp(c) => Expr::Cmp(Comparison {
            column: 0,
            ..c.clone()
        }),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_any_text(s in any::<String>()) {
        let _ = parse(&s);
    }

    #[test]
    fn never_panics_on_expression_like_text(s in "[a-z0-9 ,.()!&|<>=~'\"-]{0,40}") {
        if let Err(e) = parse(&s) {
            prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "column {} out of range for {:?}", e.column, s);
        }
    }

    /// A tree of comparisons only is a rule, and prints as one.
    #[test]
    fn rules_of_comparisons_round_trip(e in rule_tree()) {
        let text = e.to_string();
        let back = parse_rule(&text).map_err(|err| TestCaseError::fail(format!("{text:?} is not a rule: {err}")))?;
        prop_assert_eq!(without_columns(&back), without_columns(&e), "text was {:?}", text);
    }

    /// One duration grammar: whatever text `parse_duration` (neronet.yaml) takes, a rule takes
    /// after `runtime<` as the same number of seconds, and the other way round.
    #[test]
    fn durations_read_the_same_in_rules_and_config(d in "[0-9.eEhmsdw]{1,8}") {
        let in_rule = match parse(&format!("runtime<{d}")) {
            Ok(Expr::Cmp(Comparison { value: v @ (Value::Num(_) | Value::Duration(..)), .. })) => v.as_number(),
            _ => None,
        };
        prop_assert_eq!(parse_duration(&d).ok(), in_rule, "{:?}", d);
    }

    /// Well-formed durations of several parts, falling units.
    #[test]
    fn composite_durations_add_up(parts in prop::collection::vec((0u32..100, 0usize..5), 1..5)) {
        let units = [('w', 604800.0), ('d', 86400.0), ('h', 3600.0), ('m', 60.0), ('s', 1.0)];
        let mut idx: Vec<usize> = parts.iter().map(|(_, u)| *u).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut text = String::new();
        let mut secs = 0.0;
        for (i, (n, _)) in idx.iter().zip(&parts) {
            text.push_str(&format!("{n}{}", units[*i].0));
            secs += f64::from(*n) * units[*i].1;
        }
        prop_assert_eq!(parse_duration(&text), Ok(secs), "{}", text);
        let rule = parse(&format!("runtime>{text}")).unwrap();
        prop_assert_eq!(rule.comparisons()[0].value.as_number(), Some(secs), "{}", text);
    }

    #[test]
    fn print_then_parse_round_trips(e in tree()) {
        let text = e.to_string();
        let back = parse(&text).map_err(|err| TestCaseError::fail(format!("{text:?} does not parse: {err}")))?;
        prop_assert_eq!(without_columns(&back), without_columns(&e), "text was {:?}", text);
    }
}
