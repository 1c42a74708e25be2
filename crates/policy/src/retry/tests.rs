//! Table tests of the retry and replay budgets, and of the `colo-replay` header.

use super::*;

/// A step of one request's life and what the budget should say.
enum Step {
    Fail(&'static str, SendFailure, bool),
    Replay(&'static str, &'static str),
}

fn show(attempts: &Attempts) -> String {
    format!(
        "avoid {:?} only {:?} region {:?} hold {}",
        attempts.avoid(),
        attempts.only(),
        attempts.region(),
        attempts.may_hold()
    )
}

#[test]
fn budgets_by_table() {
    use SendFailure::*;
    use Step::*;
    let policy = RetryPolicy::default();
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Step>, Result<&str, GiveUp>)> = vec![
        ("a refused connect fails over", vec![Fail("a", Connect, false)],
            Ok(r#"avoid ["a"] only None region None hold false"#)),
        ("an idempotent request fails over after sending", vec![Fail("a", AfterSend, true)],
            Ok(r#"avoid ["a"] only None region None hold false"#)),
        ("a POST cut off after sending is not sent again", vec![Fail("a", AfterSend, false)], Err(GiveUp::NotIdempotent)),
        ("two failovers, then the third failure is the answer",
            vec![Fail("a", Connect, false), Fail("b", Connect, false), Fail("c", Connect, false)],
            Err(GiveUp::FailoversSpent { failed: 3, max: 2 })),
        ("a replay elsewhere avoids the machine and does not hold", vec![Replay("a", "elsewhere")],
            Ok(r#"avoid ["a"] only None region None hold false"#)),
        ("a replay elsewhere uses one failover", vec![Replay("a", "elsewhere"), Fail("b", Connect, false), Fail("c", Connect, false)],
            Err(GiveUp::FailoversSpent { failed: 3, max: 2 })),
        ("a replay to an instance does not hold", vec![Replay("a", "instance=m2")],
            Ok(r#"avoid [] only Some("m2") region None hold false"#)),
        ("a replay to a region", vec![Replay("a", "region=SYD")],
            Ok(r#"avoid [] only None region Some("syd") hold true"#)),
        ("a replay restores the failover budget",
            vec![Fail("a", Connect, false), Fail("b", Connect, false), Replay("c", "region=ams"), Fail("d", Connect, false)],
            Ok(r#"avoid ["d"] only None region Some("ams") hold false"#)),
    ];
    for (what, steps, expected) in cases {
        let mut attempts = Attempts::new();
        let mut outcome = Ok(());
        for step in steps {
            outcome = match step {
                Fail(machine, failure, idempotent) => attempts.failed(machine, failure, idempotent, &policy),
                Replay(machine, header) => attempts.replay(machine, super::Replay::parse(header).unwrap(), &policy),
            };
            if outcome.is_err() {
                break;
            }
        }
        let got = outcome.map(|()| show(&attempts));
        assert_eq!(got.as_deref().map_err(|e| *e), expected, "{what}");
    }
}

#[test]
fn replays_are_bounded() {
    let policy = RetryPolicy::default();
    let mut attempts = Attempts::new();
    for n in 1..=10 {
        assert_eq!(
            attempts.replay("a", Replay::parse("elsewhere").unwrap(), &policy),
            Ok(()),
            "replay {n}"
        );
    }
    assert_eq!(
        attempts.replay("a", Replay::parse("elsewhere").unwrap(), &policy),
        Err(GiveUp::ReplaysSpent { max: 10 })
    );
}

#[test]
fn replay_headers_by_table() {
    let replay = |region: Option<&str>, instance: Option<&str>, elsewhere| Replay {
        region: region.map(String::from),
        instance: instance.map(String::from),
        elsewhere,
    };
    let cases: Vec<(&str, Result<Replay, ReplayHeaderError>)> = vec![
        ("region=ORD", Ok(replay(Some("ord"), None, false))),
        ("instance=m-1; elsewhere", Ok(replay(None, Some("m-1"), true))),
        ("elsewhere=true", Ok(replay(None, None, true))),
        (" ; region = ams ;", Ok(replay(Some("ams"), None, false))),
        ("", Err(ReplayHeaderError::Empty)),
        ("elsewhere=false", Err(ReplayHeaderError::Empty)),
        ("region=", Err(ReplayHeaderError::BadField { field: "region=".into() })),
        ("somewhere", Err(ReplayHeaderError::BadField { field: "somewhere".into() })),
    ];
    for (header, expected) in cases {
        assert_eq!(Replay::parse(header), expected, "{header:?}");
    }
}

#[test]
fn idempotent_methods() {
    for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
        assert!(idempotent(method), "{method}");
    }
    for method in ["POST", "PATCH", "CONNECT", "get"] {
        assert!(!idempotent(method), "{method}");
    }
}
