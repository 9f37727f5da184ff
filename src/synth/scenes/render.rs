//! Paints a [`SceneSpec`]: sky, surroundings, road, traffic, the roadwork zone, weather and light,
//! then sensor noise. Everything is drawn in world metres through one camera, far to near.

use image::RgbImage;
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Camera, Canvas, Material, Rgba, Sprite};
use super::spec::{Daytime, Element, Environment, SceneSpec, Weather, scene_rng};

const LANE_W: f32 = 3.5;
const FAR_Z: f32 = 3000.0;

const CAR_COLOURS: [Rgba; 9] = [
    Rgba::rgb(30, 30, 34),
    Rgba::rgb(200, 200, 205),
    Rgba::rgb(235, 235, 235),
    Rgba::rgb(120, 125, 130),
    Rgba::rgb(25, 45, 110),
    Rgba::rgb(120, 20, 25),
    Rgba::rgb(40, 70, 50),
    Rgba::rgb(90, 60, 40),
    Rgba::rgb(160, 170, 180),
];
/// Look-alike vehicle colours (taxi, municipal van) used in hard negatives.
const LOOKALIKE_COLOURS: [Rgba; 3] = [
    Rgba::rgb(235, 120, 20),
    Rgba::rgb(240, 190, 20),
    Rgba::rgb(220, 80, 30),
];
const CONE_ORANGE: Rgba = Rgba::rgb(255, 95, 15);
const HIVIS_YELLOW: Rgba = Rgba::rgb(215, 255, 40);
const HIVIS_ORANGE: Rgba = Rgba::rgb(255, 110, 20);
const REFLECTIVE: Rgba = Rgba::rgb(235, 235, 225);
const MACHINE_YELLOW: Rgba = Rgba::rgb(245, 180, 20);

/// The road's extent across, metres, with the camera in a lane centred at x = 0.
struct Road {
    left: f32,
    right: f32,
    /// Lane boundaries between `left` and `right`.
    dividers: Vec<f32>,
    /// Width of sidewalk/shoulder beyond each edge.
    verge: f32,
}

/// Where the work zone is: the closed rightmost lane from `start` for `len` metres.
struct Zone {
    lane_c: f32,
    lane_l: f32,
    start: f32,
    len: f32,
}

/// Something standing on the ground, drawn in depth order.
struct Thing {
    z: f32,
    kind: Kind,
}

enum Kind {
    Building {
        x: f32,
        z1: f32,
        height: f32,
        depth: f32,
        colour: Rgba,
        windows: u64,
    },
    Tree {
        x: f32,
        size: f32,
    },
    Lamp {
        x: f32,
        side: f32,
    },
    Car {
        x: f32,
        colour: Rgba,
        facing_us: bool,
        van: bool,
    },
    Person {
        x: f32,
        vest: Option<Rgba>,
        shirt: Rgba,
    },
    Cone {
        x: f32,
    },
    Barrier {
        x: f32,
        width: f32,
    },
    Sign {
        x: f32,
        diamond: bool,
    },
    Excavator {
        x: f32,
        mirrored: bool,
    },
    ArrowBoard {
        x: f32,
    },
    StripedPole {
        x: f32,
    },
}

/// A light drawn after the exposure pass, so it stays bright at night.
struct Light {
    x: f32,
    y: f32,
    r: f32,
    colour: Rgba,
}

/// Renders the scene to RGB pixels.
pub fn render(spec: &SceneSpec) -> RgbImage {
    let mut r = scene_rng(spec.seed, spec.index, 1);
    let (w, h) = (spec.width as f32, spec.height as f32);
    let cam = Camera {
        width: w,
        height: h,
        horizon: (h * spec.horizon_frac).round(),
        focal: w.max(h) * r.random_range(0.65..0.95),
        cam_height: spec.camera_height_m,
    };
    let Some(mut c) = Canvas::new(cam) else {
        return RgbImage::new(spec.width.max(1), spec.height.max(1));
    };
    let road = road_layout(spec, &mut r);
    let zone = (!spec.elements.is_empty()).then(|| Zone {
        lane_c: road.right - LANE_W / 2.0,
        lane_l: road.right - LANE_W,
        start: r.random_range(5.0..14.0),
        len: r.random_range(12.0..30.0),
    });
    let mut lights = Vec::new();
    if spec.daytime == Daytime::Night {
        // Our own headlights on the road ahead.
        lights.push(Light {
            x: w / 2.0,
            y: h * 1.15,
            r: h * 0.75,
            colour: Rgba(255, 240, 215, 70),
        });
    }
    sky(&mut c, spec, &mut r);
    skyline(&mut c, spec, &mut r);
    ground(&mut c, spec, &road);
    let mut things = surroundings(spec, &road, &mut r);
    things.extend(traffic(spec, &road, zone.as_ref(), &mut r));
    if let Some(zone) = &zone {
        things.extend(work_zone(&mut c, spec, &road, zone, &mut r));
    }
    things.sort_by(|a, b| b.z.total_cmp(&a.z));
    for t in &things {
        draw_thing(&mut c, t, spec, &mut r, &mut lights);
    }
    let mut img = expose(&c, spec);
    add_lights(&mut img, &lights);
    weather_particles(&mut img, spec, &mut r);
    sensor_noise(&mut img, &mut scene_rng(spec.seed, spec.index, 2));
    img
}

fn road_layout(spec: &SceneSpec, r: &mut ChaCha8Rng) -> Road {
    let (lanes_left, lanes_right) = match spec.environment {
        Environment::Highway => (r.random_range(1..=2), r.random_range(1..=2)),
        Environment::Urban => (1, r.random_range(0..=1)),
        Environment::Suburban => (1, 0),
    };
    let left = -LANE_W / 2.0 - lanes_left as f32 * LANE_W;
    let right = LANE_W / 2.0 + lanes_right as f32 * LANE_W;
    let dividers = (1..(lanes_left + lanes_right + 1))
        .map(|i| left + i as f32 * LANE_W)
        .collect();
    let verge = match spec.environment {
        Environment::Urban => r.random_range(2.5..4.5),
        Environment::Suburban => r.random_range(1.5..3.0),
        Environment::Highway => r.random_range(2.5..3.5),
    };
    Road {
        left,
        right,
        dividers,
        verge,
    }
}

fn sky(c: &mut Canvas, spec: &SceneSpec, r: &mut ChaCha8Rng) {
    let (top, bottom) = match (spec.daytime, spec.weather) {
        (Daytime::Night, _) => (Rgba::rgb(6, 9, 22), Rgba::rgb(30, 34, 58)),
        (Daytime::Dusk, Weather::Clear) => (Rgba::rgb(45, 55, 115), Rgba::rgb(245, 150, 85)),
        (Daytime::Dusk, _) => (Rgba::rgb(70, 70, 95), Rgba::rgb(190, 140, 120)),
        (Daytime::Day, Weather::Clear) => (Rgba::rgb(60, 125, 205), Rgba::rgb(195, 220, 240)),
        (Daytime::Day, Weather::Fog) => (Rgba::rgb(195, 197, 200), Rgba::rgb(215, 215, 215)),
        (Daytime::Day, Weather::Snow) => (Rgba::rgb(165, 170, 182), Rgba::rgb(218, 220, 225)),
        (Daytime::Day, _) => (Rgba::rgb(118, 124, 136), Rgba::rgb(175, 178, 184)),
    };
    let hz = c.cam.horizon;
    c.vgradient(0.0, hz + 2.0, &[(0.0, top), (1.0, bottom)]);
    let (w, unit) = (c.cam.width, c.cam.width.max(c.cam.height));
    match (spec.daytime, spec.weather) {
        (Daytime::Day, Weather::Clear) | (Daytime::Dusk, Weather::Clear) => {
            let (sx, sy) = (r.random_range(0.1..0.9) * w, r.random_range(0.1..0.6) * hz);
            c.glow(sx, sy, unit * 0.12, Rgba(255, 250, 220, 200));
            c.circle(sx, sy, unit * 0.02, Rgba::rgb(255, 252, 235));
        }
        (Daytime::Night, Weather::Clear) => {
            let (mx, my) = (r.random_range(0.1..0.9) * w, r.random_range(0.1..0.5) * hz);
            c.circle(mx, my, unit * 0.015, Rgba::rgb(230, 230, 210));
        }
        _ => {}
    }
    if spec.daytime != Daytime::Night && matches!(spec.weather, Weather::Clear | Weather::Overcast)
    {
        let n = if spec.weather == Weather::Overcast {
            14
        } else {
            5
        };
        for _ in 0..n {
            let (cx, cy) = (
                r.random_range(-0.1..1.1) * w,
                r.random_range(0.05..0.8) * hz,
            );
            let s = unit * r.random_range(0.03..0.09);
            for k in 0..4 {
                let dx = (k as f32 - 1.5) * s * 0.8;
                c.circle(
                    cx + dx,
                    cy + r.random_range(-0.3..0.3) * s,
                    s,
                    Rgba(245, 245, 250, 90),
                );
            }
        }
    }
}

fn skyline(c: &mut Canvas, spec: &SceneSpec, r: &mut ChaCha8Rng) {
    let hz = c.cam.horizon;
    let w = c.cam.width;
    let haze = match spec.daytime {
        Daytime::Night => Rgba::rgb(20, 22, 35),
        _ => Rgba::rgb(140, 150, 165),
    };
    match spec.environment {
        Environment::Urban => {
            let mut x = -10.0;
            while x < w {
                let bw = r.random_range(0.03..0.09) * w;
                let bh = r.random_range(0.03..0.16) * c.cam.height;
                c.rect(
                    x,
                    hz - bh,
                    x + bw,
                    hz + 1.0,
                    haze.shade(r.random_range(0.85..1.05)),
                );
                x += bw * r.random_range(0.7..1.1);
            }
        }
        Environment::Suburban => {
            let mut x = -10.0;
            while x < w {
                let s = r.random_range(0.01..0.03) * w;
                c.circle(x, hz - s * 0.6, s, Rgba::rgb(70, 95, 70).mix(haze, 0.5));
                x += s * 1.2;
            }
        }
        Environment::Highway => {
            let n = 6;
            let mut pts = vec![(0.0, hz + 1.0)];
            for i in 0..=n {
                let hh = r.random_range(0.0..0.06) * c.cam.height;
                pts.push((w * i as f32 / n as f32, hz - hh));
            }
            pts.push((w, hz + 1.0));
            c.poly(&pts, Rgba::rgb(95, 115, 95).mix(haze, 0.55));
        }
    }
}

fn ground(c: &mut Canvas, spec: &SceneSpec, road: &Road) {
    let hz = c.cam.horizon;
    let h = c.cam.height;
    let verge = match spec.environment {
        Environment::Urban => Rgba::rgb(150, 148, 142),
        Environment::Suburban => Rgba::rgb(78, 118, 58),
        Environment::Highway => Rgba::rgb(112, 120, 74),
    };
    let verge = if spec.weather == Weather::Snow {
        verge.mix(Rgba::rgb(235, 238, 242), 0.75)
    } else {
        verge
    };
    c.vgradient(hz, h, &[(0.0, verge.shade(0.85)), (1.0, verge)]);
    // Sidewalks / shoulders.
    let kerb = Rgba::rgb(165, 163, 158);
    let near = 0.8;
    for (a, b) in [
        (road.left - road.verge, road.left),
        (road.right, road.right + road.verge),
    ] {
        let colour = if spec.environment == Environment::Urban {
            kerb
        } else {
            Rgba::rgb(120, 115, 105)
        };
        c.world_poly(
            &[
                (a, 0.0, near),
                (b, 0.0, near),
                (b, 0.0, FAR_Z),
                (a, 0.0, FAR_Z),
            ],
            colour,
        );
    }
    let asphalt = match spec.weather {
        Weather::Rain => Rgba::rgb(48, 49, 54),
        Weather::Snow => Rgba::rgb(95, 96, 100),
        _ => Rgba::rgb(72, 72, 75),
    };
    let (l, rr) = (road.left, road.right);
    c.world_poly(
        &[
            (l, 0.0, near),
            (rr, 0.0, near),
            (rr, 0.0, FAR_Z),
            (l, 0.0, FAR_Z),
        ],
        asphalt,
    );
    // Edge lines (solid) and lane dividers (dashed): bead-filled paint, retroreflective.
    c.material = Material::Retroreflective;
    let paint = Rgba::rgb(225, 225, 215);
    for x in [road.left + 0.25, road.right - 0.25] {
        let hw = 0.08;
        c.world_poly(
            &[
                (x - hw, 0.0, near),
                (x + hw, 0.0, near),
                (x + hw, 0.0, FAR_Z),
                (x - hw, 0.0, FAR_Z),
            ],
            paint,
        );
    }
    for &x in &road.dividers {
        let centre =
            (x - road.left - LANE_W * 2.0).abs() < 0.1 && spec.environment != Environment::Highway;
        let colour = if centre {
            Rgba::rgb(230, 190, 40)
        } else {
            paint
        };
        let mut z = 1.0;
        while z < 220.0 {
            let hw = 0.07;
            c.world_poly(
                &[
                    (x - hw, 0.0, z),
                    (x + hw, 0.0, z),
                    (x + hw, 0.0, z + 3.0),
                    (x - hw, 0.0, z + 3.0),
                ],
                colour,
            );
            z += 9.0;
        }
    }
    c.material = Material::Matte;
}

fn surroundings(spec: &SceneSpec, road: &Road, r: &mut ChaCha8Rng) -> Vec<Thing> {
    let mut out = Vec::new();
    for side in [-1.0f32, 1.0] {
        let edge = if side < 0.0 { road.left } else { road.right };
        let base = edge + side * road.verge;
        let mut z = r.random_range(3.0..10.0);
        while z < 160.0 {
            match spec.environment {
                Environment::Urban => {
                    let len = r.random_range(10.0..26.0);
                    let colour = *[
                        Rgba::rgb(165, 92, 70),
                        Rgba::rgb(190, 180, 160),
                        Rgba::rgb(140, 140, 145),
                        Rgba::rgb(210, 200, 180),
                        Rgba::rgb(110, 95, 85),
                    ]
                    .choose(r)
                    .unwrap_or(&Rgba::rgb(150, 150, 150));
                    out.push(Thing {
                        z,
                        kind: Kind::Building {
                            x: base + side * r.random_range(0.5..2.0),
                            z1: z + len,
                            height: r.random_range(8.0..30.0),
                            depth: side * 12.0,
                            colour,
                            windows: r.random(),
                        },
                    });
                    z += len + r.random_range(0.0..2.0);
                }
                Environment::Suburban => {
                    if r.random_bool(0.5) {
                        let len = r.random_range(8.0..14.0);
                        out.push(Thing {
                            z,
                            kind: Kind::Building {
                                x: base + side * r.random_range(5.0..9.0),
                                z1: z + len,
                                height: r.random_range(4.0..7.0),
                                depth: side * 9.0,
                                colour: Rgba::rgb(
                                    r.random_range(170..235),
                                    r.random_range(160..220),
                                    r.random_range(140..200),
                                ),
                                windows: r.random(),
                            },
                        });
                    }
                    out.push(Thing {
                        z: z + 2.0,
                        kind: Kind::Tree {
                            x: base + side * r.random_range(1.0..3.0),
                            size: r.random_range(4.0..9.0),
                        },
                    });
                    z += r.random_range(10.0..18.0);
                }
                Environment::Highway => {
                    if r.random_bool(0.35) {
                        out.push(Thing {
                            z,
                            kind: Kind::Tree {
                                x: base + side * r.random_range(4.0..15.0),
                                size: r.random_range(5.0..11.0),
                            },
                        });
                    }
                    z += r.random_range(12.0..30.0);
                }
            }
        }
        if spec.environment != Environment::Suburban {
            let mut z = r.random_range(5.0..20.0);
            while z < 150.0 {
                out.push(Thing {
                    z,
                    kind: Kind::Lamp {
                        x: edge + side * 0.6,
                        side,
                    },
                });
                z += 30.0;
            }
        }
    }
    out
}

fn traffic(spec: &SceneSpec, road: &Road, zone: Option<&Zone>, r: &mut ChaCha8Rng) -> Vec<Thing> {
    let mut out = Vec::new();
    let lanes: Vec<f32> = {
        let n = ((road.right - road.left) / LANE_W).round() as usize;
        (0..n)
            .map(|i| road.left + LANE_W * (i as f32 + 0.5))
            .collect()
    };
    let palette = |r: &mut ChaCha8Rng, lookalike: bool| {
        if lookalike {
            *LOOKALIKE_COLOURS.choose(r).unwrap_or(&LOOKALIKE_COLOURS[0])
        } else {
            *CAR_COLOURS.choose(r).unwrap_or(&CAR_COLOURS[0])
        }
    };
    let n_cars = r.random_range(0..=5);
    for i in 0..n_cars {
        let Some(&x) = lanes.choose(r) else { break };
        let lookalike = spec.hard_negative && i == 0;
        let z = r.random_range(9.0..90.0);
        if zone.is_some_and(|zn| (x - zn.lane_c).abs() < 1.0 && z > zn.start - 4.0) {
            continue; // the closed lane is empty past the zone's start
        }
        out.push(Thing {
            z,
            kind: Kind::Car {
                x: x + r.random_range(-0.3..0.3),
                colour: palette(r, lookalike),
                facing_us: x < -LANE_W / 2.0 && spec.environment != Environment::Highway,
                van: lookalike || r.random_bool(0.2),
            },
        });
    }
    if spec.environment != Environment::Highway && zone.is_none() {
        let mut z = r.random_range(6.0..14.0);
        while z < 60.0 {
            if r.random_bool(0.6) {
                out.push(Thing {
                    z,
                    kind: Kind::Car {
                        x: road.right - 1.1,
                        colour: palette(r, false),
                        facing_us: false,
                        van: r.random_bool(0.15),
                    },
                });
            }
            z += r.random_range(5.5..9.0);
        }
        let n_people = if spec.hard_negative {
            2
        } else {
            r.random_range(0..=2)
        };
        for _ in 0..n_people {
            let shirt = if spec.hard_negative && r.random_bool(0.5) {
                Rgba::rgb(240, 130, 30) // orange jacket, no reflective stripes
            } else {
                *CAR_COLOURS.choose(r).unwrap_or(&CAR_COLOURS[0])
            };
            out.push(Thing {
                z: r.random_range(7.0..40.0),
                kind: Kind::Person {
                    x: road.right + road.verge * r.random_range(0.3..0.8),
                    vest: None,
                    shirt,
                },
            });
        }
    }
    if spec.hard_negative && r.random_bool(0.5) {
        out.push(Thing {
            z: r.random_range(8.0..30.0),
            kind: Kind::StripedPole {
                x: road.right + 0.4,
            },
        });
    }
    out
}

/// Lays out the work zone in the rightmost lane (or the shoulder) and paints ground-level parts.
fn work_zone(
    c: &mut Canvas,
    spec: &SceneSpec,
    road: &Road,
    zone: &Zone,
    r: &mut ChaCha8Rng,
) -> Vec<Thing> {
    let mut out = Vec::new();
    let Zone {
        lane_c,
        lane_l,
        start,
        len,
    } = *zone;
    // Nearest distance at which something `x` metres off-centre is inside the frame (with margin).
    let cam = c.cam;
    let visible = |x: f32, z: f32| z.max(x.abs() * cam.focal / (0.4 * cam.width) + 1.0);
    for e in &spec.elements {
        match e {
            Element::DugAsphalt => {
                let (z0, z1) = (start + 4.0, start + len * 0.7);
                let dirt = Rgba::rgb(105, 80, 55);
                c.world_poly(
                    &[
                        (lane_l + 0.6, 0.0, z0),
                        (road.right - 0.4, 0.0, z0),
                        (road.right - 0.4, 0.0, z1),
                        (lane_l + 0.6, 0.0, z1),
                    ],
                    dirt,
                );
                c.world_poly(
                    &[
                        (lane_l + 1.0, 0.0, z0 + 1.0),
                        (road.right - 0.8, 0.0, z0 + 1.0),
                        (road.right - 0.8, 0.0, z0 + 4.0),
                        (lane_l + 1.0, 0.0, z0 + 4.0),
                    ],
                    Rgba::rgb(70, 55, 40),
                );
            }
            Element::Cones => {
                let n = r.random_range(5..=12);
                let spacing = r.random_range(2.5..4.5);
                for i in 0..n {
                    let t = (i as f32 / 4.0).min(1.0);
                    out.push(Thing {
                        z: start + i as f32 * spacing,
                        kind: Kind::Cone {
                            x: road.right - 0.3 - t * (LANE_W - 0.6),
                        },
                    });
                }
            }
            Element::Barriers => {
                for k in 0..r.random_range(1..=3) {
                    out.push(Thing {
                        z: visible(lane_c + 1.0, start + len * 0.3 + k as f32 * 5.0),
                        kind: Kind::Barrier {
                            x: lane_c + r.random_range(-0.5..0.5),
                            width: r.random_range(1.8..2.6),
                        },
                    });
                }
            }
            Element::Sign => out.push(Thing {
                z: visible(
                    road.right + road.verge * 0.5 + 0.6,
                    start - r.random_range(1.0..6.0),
                ),
                kind: Kind::Sign {
                    x: road.right + road.verge * 0.5,
                    diamond: r.random_bool(0.4),
                },
            }),
            Element::Workers => {
                for _ in 0..r.random_range(1..=3) {
                    out.push(Thing {
                        z: visible(lane_c + 1.4, start + r.random_range(3.0..len)),
                        kind: Kind::Person {
                            x: lane_c + r.random_range(-1.2..1.2),
                            vest: Some(if r.random_bool(0.5) {
                                HIVIS_YELLOW
                            } else {
                                HIVIS_ORANGE
                            }),
                            shirt: Rgba::rgb(40, 50, 70),
                        },
                    });
                }
            }
            Element::Excavator => out.push(Thing {
                z: visible(lane_c + 3.5, start + len * r.random_range(0.4..0.9)),
                kind: Kind::Excavator {
                    x: lane_c + r.random_range(-0.3..1.0),
                    mirrored: r.random_bool(0.5),
                },
            }),
            Element::ArrowBoard => out.push(Thing {
                z: visible(lane_c + 1.0, start + 1.0),
                kind: Kind::ArrowBoard { x: lane_c },
            }),
        }
    }
    out
}

fn draw_thing(
    c: &mut Canvas,
    t: &Thing,
    spec: &SceneSpec,
    r: &mut ChaCha8Rng,
    lights: &mut Vec<Light>,
) {
    let night = spec.daytime == Daytime::Night;
    match t.kind {
        Kind::Building {
            x,
            z1,
            height,
            depth,
            colour,
            windows,
        } => building(c, x, t.z, z1, height, depth, colour, windows, night, lights),
        Kind::Tree { x, size } => {
            let mut s = c.sprite(x, t.z);
            s.rect(-0.2, 0.0, 0.2, size * 0.45, Rgba::rgb(80, 60, 40));
            let leaf = if spec.weather == Weather::Snow {
                Rgba::rgb(190, 200, 195)
            } else {
                Rgba::rgb(50, 95, 45)
            };
            s.circle(0.0, size * 0.65, size * 0.35, leaf);
            s.circle(-size * 0.2, size * 0.5, size * 0.25, leaf.shade(0.9));
            s.circle(size * 0.2, size * 0.55, size * 0.25, leaf.shade(1.1));
        }
        Kind::Lamp { x, side } => {
            let mut s = c.sprite(x, t.z);
            s.rect(-0.08, 0.0, 0.08, 8.0, Rgba::rgb(90, 92, 95));
            s.line((0.0, 8.0), (-side * 1.5, 8.3), 0.12, Rgba::rgb(90, 92, 95));
            s.rect(
                -side * 1.5 - 0.3,
                8.1,
                -side * 1.5 + 0.3,
                8.35,
                Rgba::rgb(60, 60, 60),
            );
            if night || spec.daytime == Daytime::Dusk {
                let (lx, ly) = c.cam.project(x - side * 1.5, 8.0, t.z);
                lights.push(Light {
                    x: lx,
                    y: ly,
                    r: c.cam.scale(t.z) * 2.5,
                    colour: Rgba(255, 220, 150, 200),
                });
            }
        }
        Kind::Car {
            x,
            colour,
            facing_us,
            van,
        } => car(c, x, t.z, colour, facing_us, van, night, lights),
        Kind::Person { x, vest, shirt } => person(c, x, t.z, vest, shirt, r),
        Kind::Cone { x } => {
            let mut s = c.sprite(x, t.z);
            s.rect(-0.22, 0.0, 0.22, 0.04, Rgba::rgb(30, 30, 30));
            s.material(Material::Retroreflective);
            s.poly(
                &[(-0.17, 0.04), (0.17, 0.04), (0.04, 0.72), (-0.04, 0.72)],
                CONE_ORANGE,
            );
            s.poly(
                &[(-0.125, 0.22), (0.125, 0.22), (0.1, 0.34), (-0.1, 0.34)],
                REFLECTIVE,
            );
            s.poly(
                &[(-0.085, 0.44), (0.085, 0.44), (0.07, 0.52), (-0.07, 0.52)],
                REFLECTIVE,
            );
        }
        Kind::Barrier { x, width } => {
            let mut s = c.sprite(x, t.z);
            let hw = width / 2.0;
            for lx in [-hw + 0.15, hw - 0.15] {
                s.rect(lx - 0.04, 0.0, lx + 0.04, 1.2, Rgba::rgb(230, 230, 230));
            }
            s.material(Material::Retroreflective);
            for (i, y) in [0.45f32, 0.8, 1.1].iter().enumerate() {
                s.rect(-hw, *y - 0.1, hw, *y + 0.1, Rgba::rgb(245, 245, 245));
                let n = 6;
                for k in 0..n {
                    if (k + i) % 2 == 0 {
                        let x0 = -hw + width * k as f32 / n as f32;
                        let x1 = x0 + width / n as f32;
                        s.poly(
                            &[
                                (x0, y - 0.1),
                                (x1 - 0.1, y - 0.1),
                                (x1, y + 0.1),
                                (x0 + 0.1, y + 0.1),
                            ],
                            Rgba::rgb(220, 30, 30),
                        );
                    }
                }
            }
        }
        Kind::Sign { x, diamond } => {
            let mut s = c.sprite(x, t.z);
            s.rect(-0.04, 0.0, 0.04, 2.2, Rgba::rgb(150, 150, 155));
            s.material(Material::Retroreflective);
            if diamond {
                s.poly(
                    &[(0.0, 1.7), (0.5, 2.2), (0.0, 2.7), (-0.5, 2.2)],
                    Rgba::rgb(20, 20, 20),
                );
                s.poly(
                    &[(0.0, 1.75), (0.45, 2.2), (0.0, 2.65), (-0.45, 2.2)],
                    Rgba::rgb(255, 140, 0),
                );
            } else {
                s.poly(
                    &[(-0.5, 1.75), (0.5, 1.75), (0.0, 2.62)],
                    Rgba::rgb(210, 20, 20),
                );
                s.poly(
                    &[(-0.36, 1.83), (0.36, 1.83), (0.0, 2.45)],
                    Rgba::rgb(245, 245, 240),
                );
            }
            // Pictogram: a digger with a shovel and a mound.
            s.material(Material::Matte);
            let k = Rgba::rgb(15, 15, 15);
            s.circle(-0.02, 2.17, 0.045, k);
            s.line((-0.02, 2.12), (0.04, 1.98), 0.05, k);
            s.line((0.04, 1.98), (-0.07, 1.88), 0.04, k);
            s.line((0.04, 1.98), (0.1, 1.88), 0.04, k);
            s.line((-0.01, 2.08), (0.14, 2.02), 0.03, k);
            s.poly(&[(0.12, 1.88), (0.24, 1.88), (0.18, 1.95)], k);
        }
        Kind::Excavator { x, mirrored } => excavator(c, x, t.z, mirrored),
        Kind::ArrowBoard { x } => {
            let mut s = c.sprite(x, t.z);
            s.rect(-0.9, 0.2, 0.9, 0.7, Rgba::rgb(235, 170, 20));
            s.rect(-0.05, 0.7, 0.05, 1.4, Rgba::rgb(60, 60, 60));
            s.rect(-0.9, 1.4, 0.9, 2.4, Rgba::rgb(15, 15, 15));
            let lamp = Rgba::rgb(255, 200, 60);
            for i in 0..5 {
                s.circle(-0.6 + i as f32 * 0.25, 1.9, 0.07, lamp);
            }
            s.circle(0.35, 2.1, 0.07, lamp);
            s.circle(0.35, 1.7, 0.07, lamp);
            let (lx, ly) = c.cam.project(x, 1.9, t.z);
            lights.push(Light {
                x: lx,
                y: ly,
                r: c.cam.scale(t.z) * 1.0,
                colour: Rgba(255, 210, 80, 170),
            });
        }
        Kind::StripedPole { x } => {
            let mut s = c.sprite(x, t.z);
            for i in 0..6 {
                let colour = if i % 2 == 0 {
                    Rgba::rgb(200, 30, 30)
                } else {
                    Rgba::rgb(240, 240, 240)
                };
                s.rect(-0.05, i as f32 * 0.2, 0.05, (i + 1) as f32 * 0.2, colour);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn building(
    c: &mut Canvas,
    x: f32,
    z0: f32,
    z1: f32,
    height: f32,
    depth: f32,
    colour: Rgba,
    windows: u64,
    night: bool,
    lights: &mut Vec<Light>,
) {
    let facade = colour.shade(0.92);
    c.world_poly(
        &[(x, 0.0, z0), (x, height, z0), (x, height, z1), (x, 0.0, z1)],
        facade,
    );
    // The end facing the camera, a little darker.
    c.world_poly(
        &[
            (x, 0.0, z0),
            (x + depth, 0.0, z0),
            (x + depth, height, z0),
            (x, height, z0),
        ],
        colour.shade(0.75),
    );
    let floors = (height / 3.2).floor() as usize;
    let cols = ((z1 - z0) / 3.0).floor() as usize;
    let glass = Rgba::rgb(55, 70, 85);
    for f in 0..floors {
        for k in 0..cols {
            let y0 = 1.2 + f as f32 * 3.2;
            let za = z0 + 0.8 + k as f32 * 3.0;
            let lit = night && (windows >> ((f * 7 + k) % 64)) & 1 == 1;
            let col = if lit { Rgba::rgb(255, 215, 140) } else { glass };
            c.world_poly(
                &[
                    (x, y0, za),
                    (x, y0 + 1.6, za),
                    (x, y0 + 1.6, za + 1.5),
                    (x, y0, za + 1.5),
                ],
                col,
            );
            if lit && k % 3 == 0 {
                let (lx, ly) = c.cam.project(x, y0 + 0.8, za + 0.75);
                lights.push(Light {
                    x: lx,
                    y: ly,
                    r: c.cam.scale(za) * 1.2,
                    colour: Rgba(255, 210, 140, 60),
                });
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn car(
    c: &mut Canvas,
    x: f32,
    z: f32,
    colour: Rgba,
    facing_us: bool,
    van: bool,
    night: bool,
    lights: &mut Vec<Light>,
) {
    let (hw, body_h, roof_h) = if van {
        (1.0, 1.9, 2.4)
    } else {
        (0.9, 1.05, 1.5)
    };
    let mut s = c.sprite(x, z);
    s.rect(-hw + 0.1, 0.0, -hw + 0.45, 0.35, Rgba::rgb(15, 15, 15));
    s.rect(hw - 0.45, 0.0, hw - 0.1, 0.35, Rgba::rgb(15, 15, 15));
    s.rect(-hw, 0.25, hw, body_h, colour);
    s.poly(
        &[
            (-hw + 0.1, body_h),
            (hw - 0.1, body_h),
            (hw - 0.3, roof_h),
            (-hw + 0.3, roof_h),
        ],
        colour.shade(0.9),
    );
    s.poly(
        &[
            (-hw + 0.22, body_h + 0.05),
            (hw - 0.22, body_h + 0.05),
            (hw - 0.36, roof_h - 0.08),
            (-hw + 0.36, roof_h - 0.08),
        ],
        Rgba::rgb(45, 60, 75),
    );
    s.material(Material::Retroreflective);
    s.rect(-0.3, 0.35, 0.3, 0.5, Rgba::rgb(230, 230, 220));
    let lamp = if facing_us {
        Rgba::rgb(250, 250, 225)
    } else {
        Rgba::rgb(200, 20, 20)
    };
    for side in [-1.0f32, 1.0] {
        s.rect(side * (hw - 0.35), 0.65, side * (hw - 0.05), 0.85, lamp);
    }
    s.material(Material::Matte);
    if night {
        for side in [-1.0f32, 1.0] {
            let (lx, ly) = c.cam.project(x + side * (hw - 0.2), 0.75, z);
            let (r, col) = if facing_us {
                (3.0, Rgba(255, 250, 220, 220))
            } else {
                (0.8, Rgba(255, 40, 30, 200))
            };
            lights.push(Light {
                x: lx,
                y: ly,
                r: c.cam.scale(z) * r,
                colour: col,
            });
        }
    }
}

fn person(c: &mut Canvas, x: f32, z: f32, vest: Option<Rgba>, shirt: Rgba, r: &mut ChaCha8Rng) {
    let mut s: Sprite<'_> = c.sprite(x, z);
    let trousers = Rgba::rgb(35, 40, 55);
    let skin = *[
        Rgba::rgb(230, 190, 160),
        Rgba::rgb(170, 120, 90),
        Rgba::rgb(110, 75, 55),
    ]
    .choose(r)
    .unwrap_or(&Rgba::rgb(200, 160, 130));
    s.poly(
        &[(-0.18, 0.0), (-0.05, 0.0), (-0.02, 0.85), (-0.2, 0.85)],
        trousers,
    );
    s.poly(
        &[(0.05, 0.0), (0.18, 0.0), (0.2, 0.85), (0.02, 0.85)],
        trousers,
    );
    s.rect(-0.22, 0.85, 0.22, 1.45, shirt);
    s.line((-0.22, 1.42), (-0.3, 0.95), 0.09, shirt);
    s.line((0.22, 1.42), (0.3, 0.95), 0.09, shirt);
    s.circle(0.0, 1.6, 0.12, skin);
    if let Some(v) = vest {
        s.material(Material::Retroreflective);
        s.rect(-0.23, 0.9, 0.23, 1.45, v);
        s.rect(-0.23, 1.05, 0.23, 1.1, REFLECTIVE);
        s.rect(-0.23, 1.22, 0.23, 1.27, REFLECTIVE);
        s.rect(-0.14, 1.1, -0.09, 1.45, REFLECTIVE);
        s.rect(0.09, 1.1, 0.14, 1.45, REFLECTIVE);
        s.material(Material::Matte);
        // Hard hat.
        let hat = if r.random_bool(0.5) {
            Rgba::rgb(250, 250, 245)
        } else {
            Rgba::rgb(250, 200, 20)
        };
        s.poly(
            &[(-0.15, 1.68), (0.15, 1.68), (0.11, 1.8), (-0.11, 1.8)],
            hat,
        );
        s.rect(-0.18, 1.66, 0.18, 1.69, hat);
    }
}

fn excavator(c: &mut Canvas, x: f32, z: f32, mirrored: bool) {
    let m = if mirrored { -1.0 } else { 1.0 };
    let mut s = c.sprite(x, z);
    let dark = Rgba::rgb(35, 35, 35);
    // Tracks.
    s.rect(-1.4, 0.0, 1.4, 0.8, dark);
    s.rect(-1.3, 0.1, 1.3, 0.7, Rgba::rgb(60, 60, 60));
    // Body and cab.
    s.rect(-1.3, 0.8, 1.3, 1.9, MACHINE_YELLOW);
    s.rect(m * -1.2, 1.9, m * 0.1, 3.0, MACHINE_YELLOW.shade(0.95));
    s.rect(m * -1.05, 2.05, m * -0.05, 2.85, Rgba::rgb(60, 80, 95));
    s.rect(m * 0.4, 1.9, m * 1.2, 2.3, Rgba::rgb(40, 40, 40));
    // Boom, stick, bucket.
    let (b0, b1, b2) = ((m * 0.9, 1.7), (m * 2.6, 3.6), (m * 3.4, 1.2));
    s.line(b0, b1, 0.35, MACHINE_YELLOW.shade(0.9));
    s.line(b1, b2, 0.25, MACHINE_YELLOW.shade(0.85));
    s.poly(
        &[
            (b2.0 - m * 0.3, b2.1 + 0.2),
            (b2.0 + m * 0.45, b2.1 + 0.1),
            (b2.0 + m * 0.2, b2.1 - 0.5),
            (b2.0 - m * 0.3, b2.1 - 0.3),
        ],
        dark,
    );
}

/// Applies light level and haze to the painted scene and returns it as RGB.
fn expose(c: &Canvas, spec: &SceneSpec) -> RgbImage {
    let light: f32 = match spec.daytime {
        Daytime::Day => 1.0,
        Daytime::Dusk => 0.72,
        Daytime::Night => 0.36,
    } * match spec.weather {
        Weather::Rain => 0.78,
        Weather::Overcast | Weather::Snow => 0.9,
        _ => 1.0,
    };
    let (haze, haze_max) = match (spec.weather, spec.daytime) {
        (Weather::Fog, Daytime::Night) => (Rgba::rgb(50, 52, 58), 0.85),
        (Weather::Fog, _) => (Rgba::rgb(205, 207, 210), 0.85),
        (Weather::Rain, _) => (Rgba::rgb(140, 145, 150), 0.45),
        (_, Daytime::Night) => (Rgba::rgb(25, 28, 45), 0.2),
        _ => (Rgba::rgb(200, 210, 225), 0.25),
    };
    let (w, h) = (c.pix.width(), c.pix.height());
    let hz = c.cam.horizon;
    let band = c.cam.height
        * if spec.weather == Weather::Fog {
            0.45
        } else {
            0.18
        };
    // Retroreflective surfaces return the headlights: at night they keep most of their brightness.
    let returned = match spec.daytime {
        Daytime::Day => light,
        Daytime::Dusk => light.max(0.9),
        Daytime::Night => 0.8,
    };
    let (data, refl) = (c.pix.data(), c.reflective.data());
    RgbImage::from_fn(w, h, |x, y| {
        let i = ((y * w + x) * 4) as usize;
        let t = haze_max * (-((y as f32 - hz).abs() / band)).exp();
        let a = refl[i + 3] as f32 / 255.0;
        // Premultiplied overlay: out = scene·light·(1−α) + overlay·returned.
        let ch = |k: usize| data[i + k] as f32 * light * (1.0 - a) + refl[i + k] as f32 * returned;
        let px = Rgba::rgb(
            ch(0).min(255.0) as u8,
            ch(1).min(255.0) as u8,
            ch(2).min(255.0) as u8,
        )
        .mix(haze.shade(light.max(0.6)), t);
        image::Rgb([px.0, px.1, px.2])
    })
}

/// Adds each light's glow to the exposed image, so lamps stay bright however dark the scene is.
fn add_lights(img: &mut RgbImage, lights: &[Light]) {
    let (w, h) = (img.width(), img.height());
    for l in lights.iter().filter(|l| l.r >= 0.5) {
        let x0 = (l.x - l.r).max(0.0) as u32;
        let y0 = (l.y - l.r).max(0.0) as u32;
        let x1 = ((l.x + l.r).max(0.0) as u32).min(w.saturating_sub(1));
        let y1 = ((l.y + l.r).max(0.0) as u32).min(h.saturating_sub(1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let d = ((x as f32 - l.x).powi(2) + (y as f32 - l.y).powi(2)).sqrt() / l.r;
                if d >= 1.0 {
                    continue;
                }
                let k = (1.0 - d) * (1.0 - d) * l.colour.3 as f32 / 255.0;
                let p = img.get_pixel_mut(x, y);
                for (ch, add) in p.0.iter_mut().zip([l.colour.0, l.colour.1, l.colour.2]) {
                    *ch = (*ch as f32 + k * add as f32).min(255.0) as u8;
                }
            }
        }
    }
}

fn weather_particles(img: &mut RgbImage, spec: &SceneSpec, r: &mut ChaCha8Rng) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let unit = w.max(h);
    match spec.weather {
        Weather::Rain => {
            let n = (w * h / 900.0) as usize;
            let len = unit * 0.025;
            for _ in 0..n {
                let (x, y) = (r.random_range(0.0..w), r.random_range(0.0..h));
                for k in 0..(len as i32) {
                    let (px, py) = ((x + k as f32 * 0.25) as u32, (y + k as f32) as u32);
                    if px < img.width() && py < img.height() {
                        let p = img.get_pixel_mut(px, py);
                        for ch in p.0.iter_mut() {
                            *ch = ((*ch as u16 * 3 + 200) / 4) as u8;
                        }
                    }
                }
            }
        }
        Weather::Snow => {
            let n = (w * h / 400.0) as usize;
            for _ in 0..n {
                let (x, y) = (r.random_range(0.0..w), r.random_range(0.0..h));
                let rad = r.random_range(0.5..(unit * 0.004).max(1.0));
                let (x0, y0) = ((x - rad).max(0.0) as u32, (y - rad).max(0.0) as u32);
                for py in y0..((y + rad) as u32).min(img.height()) {
                    for px in x0..((x + rad) as u32).min(img.width()) {
                        img.put_pixel(px, py, image::Rgb([240, 242, 245]));
                    }
                }
            }
        }
        _ => {}
    }
}

/// Photon/read noise and a mild vignette, so no two pixels of a flat area are identical.
fn sensor_noise(img: &mut RgbImage, r: &mut ChaCha8Rng) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let sigma = r.random_range(1.5..5.0f32);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let dx = (x as f32 / w - 0.5) * 2.0;
        let dy = (y as f32 / h - 0.5) * 2.0;
        let vignette = 1.0 - 0.18 * (dx * dx + dy * dy) / 2.0;
        // Sum of two uniforms: a cheap, bounded bell shape.
        let n = (r.random::<f32>() + r.random::<f32>() - 1.0) * sigma * 1.7;
        for ch in p.0.iter_mut() {
            *ch = (*ch as f32 * vignette + n).clamp(0.0, 255.0) as u8;
        }
    }
}
