//! Measures the network part of `isthmus up`: node namespace + bridge + N pods, then `down`.
//! Needs root; prints SKIPPED otherwise. Run: `cargo bench -p isthmus-local --bench mesh_up`.

use std::time::Instant;

use isthmus_local::{capture, net};

fn main() {
    if !isthmus_local::testing::namespaces_available("bench mesh_up") {
        return;
    }
    let rounds = 5;
    for pods in [4usize, 16] {
        let mut up_ms = Vec::new();
        let mut down_ms = Vec::new();
        for r in 0..rounds {
            let name = format!("bench{pods}x{r}");
            let _ = net::cleanup_mesh(net::DEFAULT_PREFIX, &name);
            let t = Instant::now();
            let mesh = net::MeshNet::up(net::MeshNetConfig::new(&name)).expect("up");
            for i in 0..pods {
                let p = mesh.add_pod(&format!("default/pod-{i}")).expect("pod");
                capture::install_capture(&p.netns, &capture::CaptureConfig::default())
                    .expect("capture");
            }
            up_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            mesh.down().expect("down");
            down_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        up_ms.sort_by(|a, b| a.total_cmp(b));
        down_ms.sort_by(|a, b| a.total_cmp(b));
        println!(
            "mesh_up pods={pods}: up+capture median {:.1} ms (min {:.1}, max {:.1}); down median {:.1} ms",
            up_ms[rounds / 2],
            up_ms[0],
            up_ms[rounds - 1],
            down_ms[rounds / 2]
        );
    }
}
