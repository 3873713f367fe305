//! The per-AssumedRole series: when its role credentials expire and are renewed, and whether it
//! is Ready, labelled with its namespace, name and the SessionToken it draws on.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::collections::HashMap;
use std::sync::RwLock;

/// What is kept of one AssumedRole: the SessionToken's name, Unix seconds (0: none), ready.
#[derive(Clone, Debug, PartialEq)]
struct Recorded {
    session_token: Box<str>,
    expiration: i64,
    renewal: i64,
    ready: bool,
}

/// (namespace, name) → what was recorded.
type ByName = HashMap<(Box<str>, Box<str>), Recorded>;

#[derive(Debug, Default)]
pub(crate) struct RoleSeries {
    roles: RwLock<ByName>,
}

type Gauge = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&Recorded) -> Option<i64>,
);

const GAUGES: [Gauge; 3] = [
    (
        "sts_assumed_role_expiration_timestamp",
        "Unix time when the AssumedRole's role credentials expire",
        Some(Unit::Seconds),
        |r| (r.expiration != 0).then_some(r.expiration),
    ),
    (
        "sts_assumed_role_renewal_timestamp",
        "Unix time when the AssumedRole's role is assumed again",
        Some(Unit::Seconds),
        |r| (r.renewal != 0).then_some(r.renewal),
    ),
    (
        "sts_assumed_role_ready_status",
        "1 if the AssumedRole is Ready (its Secret holds valid role credentials kept fresh), else 0",
        None,
        |r| Some(i64::from(r.ready)),
    ),
];

impl RoleSeries {
    pub(crate) fn set(&self, namespace: &str, name: &str, m: &crate::plan::AssumedRoleMetrics) {
        let recorded = Recorded {
            session_token: m.session_token.as_str().into(),
            expiration: m.expiration.map_or(0, |t| t.as_second()),
            renewal: m.renewal.map_or(0, |t| t.as_second()),
            ready: m.ready,
        };
        let mut roles = self.roles.write().unwrap_or_else(|p| p.into_inner());
        roles.insert((namespace.into(), name.into()), recorded);
    }

    pub(crate) fn remove(&self, namespace: &str, name: &str) {
        let mut roles = self.roles.write().unwrap_or_else(|p| p.into_inner());
        roles.remove(&(Box::from(namespace), Box::from(name)));
        if roles.capacity() > 64 && roles.len() < roles.capacity() / 4 {
            roles.shrink_to_fit();
        }
    }
}

impl Collector for RoleSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let roles = self.roles.read().unwrap_or_else(|p| p.into_inner());
        for (name, help, unit, value) in &GAUGES {
            let mut family =
                encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for ((namespace, role), recorded) in roles.iter() {
                if let Some(v) = value(recorded) {
                    let labels = [
                        ("namespace", &**namespace),
                        ("name", &**role),
                        ("session_token", &*recorded.session_token),
                    ];
                    ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}
