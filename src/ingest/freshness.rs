//! How old the data of the next frame is: per store, the oldest event time applied since
//! the last frame, and the oldest Kafka record timestamp (the producer's clock). Observed
//! into the freshness and produce → frame histograms when the frame goes out, then
//! cleared: one observation per scope per frame, never one per event.

use crate::events::Event;
use crate::events::StoreId;
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::time::Duration;

/// The oldest times of what the next frame carries.
#[derive(Debug, Default)]
pub struct PendingAges {
    oldest_event_ms: BTreeMap<StoreId, i64>,
    oldest_record_ms: Option<i64>,
}

impl PendingAges {
    /// Notes an applied event and its record's timestamp.
    pub fn note(&mut self, event: &Event, record_time_ms: Option<i64>) {
        let at = event.occurred_at();
        match self.oldest_event_ms.get_mut(event.store_id().0.as_str()) {
            Some(oldest) => *oldest = (*oldest).min(at),
            None => {
                self.oldest_event_ms.insert(event.store_id().clone(), at);
            }
        }
        if let Some(record) = record_time_ms {
            self.oldest_record_ms = Some(self.oldest_record_ms.map_or(record, |o| o.min(record)));
        }
    }

    /// Observes the ages at `now_ms` (wall clock, Unix ms) per store and for all stores,
    /// with `trace` (a sampled record's trace id) as the exemplar, and starts over. A time
    /// ahead of `now_ms` (a producer's clock running fast) counts as age zero.
    pub fn observe(&mut self, metrics: &Metrics, now_ms: i64, trace: Option<&str>) {
        let age = |t: i64| Duration::from_millis(u64::try_from(now_ms - t).unwrap_or(0));
        let mut oldest = None::<i64>;
        for (store, at) in std::mem::take(&mut self.oldest_event_ms) {
            metrics.observe_freshness(Some(&store), age(at), trace);
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
        if let Some(at) = oldest {
            metrics.observe_freshness(None, age(at), trace);
        }
        if let Some(record) = self.oldest_record_ms.take() {
            metrics.produce_to_frame.observe(age(record).as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::samples;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {text}"))
    }

    #[test]
    fn the_oldest_event_of_each_store_and_of_all_is_observed_once_per_frame() {
        let metrics = Metrics::default();
        let mut ages = PendingAges::default();
        let mut berlin = samples::order_placed();
        let mut paris = samples::order_placed();
        paris.store_id = StoreId::from("store-paris");
        berlin.store_id = StoreId::from("store-berlin");
        for (at, order) in [(9_000, &berlin), (7_000, &berlin), (9_500, &paris)] {
            let mut order = order.clone();
            order.occurred_at = at;
            ages.note(&Event::OrderPlaced(order), Some(at + 100));
        }
        ages.observe(&metrics, 10_000, None);
        let text = metrics.render();
        assert_eq!(
            line(
                &text,
                "storepulse_freshness_seconds_sum{scope=\"store-berlin\"}"
            ),
            "storepulse_freshness_seconds_sum{scope=\"store-berlin\"} 3.0"
        );
        assert_eq!(
            line(
                &text,
                "storepulse_freshness_seconds_sum{scope=\"store-paris\"}"
            ),
            "storepulse_freshness_seconds_sum{scope=\"store-paris\"} 0.5"
        );
        assert_eq!(
            line(&text, "storepulse_freshness_seconds_sum{scope=\"all\"}"),
            "storepulse_freshness_seconds_sum{scope=\"all\"} 3.0"
        );
        assert_eq!(
            line(&text, "storepulse_produce_to_frame_seconds_count"),
            "storepulse_produce_to_frame_seconds_count 1"
        );
        assert_eq!(
            line(&text, "storepulse_produce_to_frame_seconds_sum"),
            "storepulse_produce_to_frame_seconds_sum 2.9"
        );
        // Cleared: a frame with nothing new observes nothing.
        ages.observe(&metrics, 20_000, None);
        assert_eq!(
            line(
                &metrics.render(),
                "storepulse_freshness_seconds_count{scope=\"all\"}"
            ),
            "storepulse_freshness_seconds_count{scope=\"all\"} 1"
        );
    }

    #[test]
    fn an_event_from_a_fast_clock_is_age_zero() {
        let metrics = Metrics::default();
        let mut ages = PendingAges::default();
        let mut order = samples::order_placed();
        order.occurred_at = 12_000;
        ages.note(&Event::OrderPlaced(order), None);
        ages.observe(&metrics, 10_000, None);
        let text = metrics.render();
        assert_eq!(
            line(&text, "storepulse_freshness_seconds_sum{scope=\"all\"}"),
            "storepulse_freshness_seconds_sum{scope=\"all\"} 0.0"
        );
        assert_eq!(
            line(&text, "storepulse_produce_to_frame_seconds_count"),
            "storepulse_produce_to_frame_seconds_count 0"
        );
    }
}
