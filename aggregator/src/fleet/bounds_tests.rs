//! A schedule's bounds at AWS.

use super::*;

#[test]
fn a_schedules_bounds_are_set_at_aws_before_a_capacity_inside_them_and_survive_a_restart() {
    let r = rig(false);
    r.refresh();
    let mut e = scale(2, 6);
    if let Event::Scaling(d) = &mut e {
        d.scheduled = Some(vigil_rules::schedule::ScheduleRun {
            schedule: "peak".into(),
            at: T0,
            min: Some(6),
            max: Some(30),
        });
    }
    r.fleet.take(std::slice::from_ref(&e), T0);
    assert_eq!(
        r.fleet.pending("web"),
        Some(6),
        "the schedule's bounds count, not the group's max of 4 at AWS"
    );
    // Saved before it is carried out: a restart sets the bounds.
    let saved = r.fleet.pending_json();
    assert_eq!(saved["bounds"]["web"]["min"], 6, "{saved}");
    r.actuate();
    assert_eq!(
        r.aws.calls(),
        [
            "describe web",
            "bounds web Some(6) Some(30)",
            "describe web",
            "set web 6"
        ]
    );
    assert!(r.fleet.pending_json().get("bounds").is_none());
    let again = rig(false);
    again.refresh();
    again.fleet.restore_pending(&saved).unwrap();
    again.actuate();
    assert!(
        again
            .aws
            .calls()
            .contains(&"bounds web Some(6) Some(30)".to_string()),
        "{:?}",
        again.aws.calls()
    );
}
