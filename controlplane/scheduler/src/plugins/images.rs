//! ImageLocality: nodes that already hold the pod's images score higher, scaled by the
//! images' sizes and by how many nodes hold them (so one node holding a popular image does not
//! attract every pod).

use crate::cluster::{Cluster, NodeInfo, normalize_image};
use crate::framework::MAX_SCORE;
use crate::podinfo::PodInfo;

const MB: i64 = 1024 * 1024;
/// Below this the images are not worth moving a pod for.
const MIN_THRESHOLD: i64 = 23 * MB;
/// Per container, above this the node scores fully.
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

pub fn locality(pod: &PodInfo, n: &NodeInfo, cluster: &Cluster) -> i64 {
    if n.images.is_empty() {
        return 0;
    }
    let Some(spec) = pod.pod.spec.as_ref() else {
        return 0;
    };
    let total = cluster.node_count().max(1) as f64;
    let mut sum = 0.0;
    let mut containers = 0;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        containers += 1;
        let Some(image) = c.image.as_deref() else {
            continue;
        };
        let image = normalize_image(image);
        if let Some(size) = n.images.get(&image) {
            let spread = cluster.image_spread(&image) as f64 / total;
            sum += *size as f64 * spread;
        }
    }
    let max = MAX_CONTAINER_THRESHOLD * containers.max(1);
    let sum = (sum as i64).clamp(MIN_THRESHOLD, max);
    MAX_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;
    use serde_json::json;

    #[test]
    fn nodes_with_the_image_score_higher() {
        let mut warm = node("warm", "4", "8Gi");
        warm["status"]["images"] =
            json!([{"names": ["docker.io/library/big:1"], "sizeBytes": 800 * MB}]);
        let mut warm2 = node("warm2", "4", "8Gi");
        warm2["status"]["images"] = warm["status"]["images"].clone();
        let c = cluster(&[warm, warm2, node("cold", "4", "8Gi")], &[]);
        let p = pod_info(&pod(
            "p",
            json!({"containers": [{"name": "c", "image": "big:1"}]}),
        ));
        let hot = locality(&p, c.node("warm").unwrap(), &c);
        assert!(hot > 0);
        assert_eq!(locality(&p, c.node("cold").unwrap(), &c), 0);
        // 800 MiB held by 2 of 3 nodes: (533 - 23) / (1000 - 23) of the score.
        assert_eq!(hot, 52);
    }
}
