//! Executors, the mesh of rings between them, routing, listeners and start-up: the only code
//! that names glommio.

pub mod disk;
pub mod iso_net;
pub mod mesh;
pub mod net;
pub mod routing;
pub mod server;
