//! The tests' PostgreSQL: the fleet benchmark's throwaway server
//! (`phygate_hq::fleetsim::pgserver`), failing the test at once when it cannot start.

use std::ops::{Deref, DerefMut};

use phygate_hq::fleetsim::pgserver;

pub struct Postgres(pgserver::Postgres);

impl Postgres {
    pub fn start() -> Postgres {
        Postgres(pgserver::Postgres::start().expect("starting PostgreSQL"))
    }

    pub fn restart(&mut self) {
        self.0.restart().expect("restarting PostgreSQL");
    }

    pub fn database(&self, name: &str) -> String {
        self.0.database(name).expect("creating a database")
    }

    pub fn query(&self, db: &str, sql: &str) -> Vec<String> {
        self.0.query(db, sql).expect("querying PostgreSQL")
    }
}

impl Deref for Postgres {
    type Target = pgserver::Postgres;
    fn deref(&self) -> &pgserver::Postgres {
        &self.0
    }
}

impl DerefMut for Postgres {
    fn deref_mut(&mut self) -> &mut pgserver::Postgres {
        &mut self.0
    }
}
