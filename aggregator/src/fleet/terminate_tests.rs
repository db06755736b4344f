//! Scale-in victims: terminated with the capacity lowered by AWS, retried while in service.

use std::collections::HashMap;

use super::*;

fn scale_in(from: u32, victims: &[&str]) -> Event {
    let mut e = scale(from, from - victims.len() as u32);
    if let Event::Scaling(d) = &mut e {
        d.victims = victims
            .iter()
            .map(|v| (v.to_string(), "lowest".to_string()))
            .collect();
    }
    e
}

#[test]
fn victims_are_terminated_and_the_capacity_aws_lowers_is_not_an_outside_change() {
    let r = rig(false);
    {
        let mut g = r.aws.groups.lock().unwrap();
        g[0].desired = 3;
        g[0].members.push(member("i-3"));
    }
    r.refresh();
    r.fleet.take(&[scale_in(3, &["i-2"])], T0);
    // The next evaluation counts the victim as gone, and never chooses it again.
    let o = r.fleet.observe(&names(), &HashMap::new(), T0);
    assert_eq!(observed_capacity(&o, "web"), Some(2));
    assert!(!o.placement["web"]["i-2"].in_service);
    assert!(o.placement["web"]["i-3"].in_service);
    assert_eq!(
        r.fleet.pending("web"),
        None,
        "no capacity is set: AWS lowers it"
    );
    let saved = r.fleet.pending_json();
    assert_eq!(saved["terminate"]["i-2"]["asg"], "web", "{saved}");
    r.actuate();
    assert_eq!(r.aws.calls(), ["describe web", "terminate i-2"]);
    assert_eq!(r.last_result(), "terminated i-2");
    // A describe that still shows the victim in service (AWS lagging) does not bring it back
    // as a candidate; once one shows it gone, it is forgotten.
    r.aws.groups.lock().unwrap()[0].members.push(member("i-2"));
    r.refresh();
    let o = r.fleet.observe(&names(), &HashMap::new(), T0);
    assert!(!o.placement["web"]["i-2"].in_service);
    r.aws.groups.lock().unwrap()[0]
        .members
        .retain(|m| m.id != "i-2");
    r.refresh();
    assert!(
        !metrics(&r.registry).contains("external_capacity_changes_total{asg=\"web\"} 1"),
        "AWS lowering the capacity for a victim is Vigil's own change"
    );
    let o = r.fleet.observe(&names(), &HashMap::new(), T0);
    assert_eq!(observed_capacity(&o, "web"), Some(2));

    // A failed call is retried while the victim is in service; gone, it is dropped.
    r.fleet.take(&[scale_in(2, &["i-3"])], T0);
    r.aws.fail_next("terminate", false);
    r.actuate();
    assert_eq!(r.fleet.pending_json()["terminate"]["i-3"]["asg"], "web");
    r.aws.groups.lock().unwrap()[0]
        .members
        .retain(|m| m.id != "i-3");
    r.refresh();
    r.clock.advance(60_000);
    r.actuate();
    let terminations = r
        .aws
        .calls()
        .iter()
        .filter(|c| c.as_str() == "terminate i-3")
        .count();
    assert_eq!(terminations, 1, "{:?}", r.aws.calls());
    assert!(r.fleet.pending_json().get("terminate").is_none());
}

#[test]
fn victims_wait_for_a_view_of_their_group_and_never_take_it_below_its_min() {
    // Restored after a restart: nothing is terminated before the group is described.
    let r = rig(false);
    r.fleet.take(&[scale_in(2, &["i-2"])], T0);
    r.actuate();
    assert!(r.aws.calls().is_empty(), "{:?}", r.aws.calls());
    r.refresh();
    r.actuate();
    assert_eq!(r.aws.calls(), ["describe web", "terminate i-2"]);
    // The group's min at AWS is 1: of two victims from 2, only the first goes.
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale_in(2, &["i-1", "i-2"])], T0);
    r.actuate();
    assert_eq!(r.aws.calls(), ["describe web", "terminate i-1"]);
}

#[test]
fn a_capacity_decided_after_victims_replaces_those_not_terminated_yet() {
    let r = rig(false);
    r.refresh();
    r.fleet.take(&[scale_in(2, &["i-2"])], T0);
    r.fleet.take(&[scale(1, 3)], T0);
    assert!(r.fleet.pending_json().get("terminate").is_none());
    r.actuate();
    assert_eq!(r.aws.calls(), ["describe web", "describe web", "set web 3"]);
}
