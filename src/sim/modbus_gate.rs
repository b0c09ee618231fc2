//! Turnstile I/O module simulator: a Modbus RTU slave on a pty master (docs/protocols.md §3a), built
//! on the codec's device side. Holding 0–4 hold the pass counters and status bits of the
//! default map; coils 0–3 are relays, and every write is recorded with the time it arrived.
//! People pass, counters wrap, the module resets, the alarm input trips, and faults are injected
//! per request: an exception, a bad CRC, silence, a frame cut short, garbage.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Pty;
use crate::sources::gate::modbus::{
    encode_response, exception_response, GateRegisters, ModbusError, Request, RequestReader,
    Response, EXC_ILLEGAL_DATA_ADDRESS, EXC_SERVER_DEVICE_FAILURE,
};

/// Relays (coils) on the simulated module.
const COILS: u16 = 4;
/// A partial request older than this is dropped (the bus's frame silence, generously).
const PARTIAL_REQUEST: Duration = Duration::from_millis(50);
/// How often the serving thread looks at its stop flag.
const TICK: Duration = Duration::from_millis(20);

/// What goes wrong with the answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Refuse with this exception code (the module does not act).
    Exception(u8),
    /// Answer with a damaged CRC (the module did act).
    BadCrc,
    /// No answer at all (the module did not hear it): the gateway times out.
    Silence,
    /// Send the first half of the answer, then nothing.
    HangMidFrame,
    /// Send bytes that are no valid answer.
    Garbage,
}

/// A coil write as the module received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoilWrite {
    pub address: u16,
    pub on: bool,
    /// When the request's last byte was read from the line.
    pub at: Instant,
}

struct Module {
    unit: u8,
    registers: GateRegisters,
    faults: VecDeque<Fault>,
    coil_writes: Vec<CoilWrite>,
    /// Requests addressed to this unit, answered or not.
    requests: u64,
    notify: Option<mpsc::Sender<CoilWrite>>,
}

impl Module {
    /// The bytes to send for `request`, received at `at`; empty for no answer.
    fn answer(&mut self, request: Request, at: Instant) -> Vec<u8> {
        self.requests += 1;
        let fault = self.faults.pop_front();
        if fault == Some(Fault::Silence) {
            return Vec::new();
        }
        if let Some(Fault::Exception(code)) = fault {
            return exception_response(self.unit, request.function(), code);
        }
        let frame = match self.respond(request, at) {
            Ok(response) => encode_response(self.unit, &response)
                .unwrap_or_else(|_| self.exception(request, EXC_SERVER_DEVICE_FAILURE)),
            Err(code) => self.exception(request, code),
        };
        match fault {
            Some(Fault::BadCrc) => {
                let mut f = frame;
                if let Some(last) = f.last_mut() {
                    *last ^= 0xA5;
                }
                f
            }
            Some(Fault::HangMidFrame) => frame[..frame.len() / 2].to_vec(),
            // Our unit address, then a function code nobody asked for.
            Some(Fault::Garbage) => vec![self.unit, 0x2B, 0x0E, 0xFF, 0x00, 0x13, 0x37],
            _ => frame,
        }
    }

    fn exception(&self, request: Request, code: u8) -> Vec<u8> {
        exception_response(self.unit, request.function(), code)
    }

    fn respond(&mut self, request: Request, at: Instant) -> Result<Response, u8> {
        match request {
            Request::ReadHolding {
                start, quantity, ..
            } => {
                let regs = self.registers.to_holding();
                let range = usize::from(start)..usize::from(start) + usize::from(quantity);
                let registers = regs.get(range).ok_or(EXC_ILLEGAL_DATA_ADDRESS)?.to_vec();
                Ok(Response::ReadHolding { registers })
            }
            Request::WriteSingleCoil { address, on, .. } => {
                if address >= COILS {
                    return Err(EXC_ILLEGAL_DATA_ADDRESS);
                }
                let write = CoilWrite { address, on, at };
                self.coil_writes.push(write);
                if let Some(n) = &self.notify {
                    // The listener may be gone (CLI closing); the write is recorded either way.
                    let _ = n.send(write);
                }
                Ok(Response::WriteSingleCoil { address, on })
            }
        }
    }
}

/// A simulated module serving a pty. Dropping it unplugs the device.
pub struct GateSim {
    module: Arc<Mutex<Module>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pty: Pty,
}

impl GateSim {
    /// Plugs a module with unit address `unit` in at `link`, counters at zero.
    pub fn start(link: &Path, unit: u8) -> std::io::Result<GateSim> {
        Self::start_with_counters(link, unit, 0, 0)
    }

    /// As [`GateSim::start`], counters already at `pass_in` / `pass_out` before the first poll
    /// (a module replugged after counting on its own).
    pub fn start_with_counters(
        link: &Path,
        unit: u8,
        pass_in: u32,
        pass_out: u32,
    ) -> std::io::Result<GateSim> {
        let pty = Pty::open(link)?;
        let module = Arc::new(Mutex::new(Module {
            unit,
            registers: GateRegisters {
                pass_in,
                pass_out,
                passage_in_progress: false,
                alarm: false,
            },
            faults: VecDeque::new(),
            coil_writes: Vec::new(),
            requests: 0,
            notify: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let master = pty.master.try_clone()?;
        let thread = {
            let (module, stop) = (module.clone(), stop.clone());
            std::thread::Builder::new()
                .name("sim-gate".into())
                .spawn(move || serve(master, &module, &stop))?
        };
        Ok(GateSim {
            module,
            stop,
            thread: Some(thread),
            pty,
        })
    }

    fn module(&self) -> MutexGuard<'_, Module> {
        // A panic in the serving thread must not hide what the test wants to see.
        self.module.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn link(&self) -> &Path {
        &self.pty.link
    }

    /// `n` people pass in (PASS A pulses); the counter wraps at 2³².
    pub fn pass_in(&self, n: u32) {
        let r = &mut self.module().registers;
        r.pass_in = r.pass_in.wrapping_add(n);
    }

    /// `n` people pass out (PASS B pulses).
    pub fn pass_out(&self, n: u32) {
        let r = &mut self.module().registers;
        r.pass_out = r.pass_out.wrapping_add(n);
    }

    /// Sets both counters at once (between two polls).
    pub fn set_counters(&self, pass_in: u32, pass_out: u32) {
        let r = &mut self.module().registers;
        (r.pass_in, r.pass_out) = (pass_in, pass_out);
    }

    pub fn counters(&self) -> (u32, u32) {
        let r = self.module().registers;
        (r.pass_in, r.pass_out)
    }

    /// The module restarts: both counters back to 0.
    pub fn reset(&self) {
        self.set_counters(0, 0);
    }

    /// The fault / alarm input (status bit 1).
    pub fn set_alarm(&self, on: bool) {
        self.module().registers.alarm = on;
    }

    /// Status bit 0.
    pub fn set_passage_in_progress(&self, on: bool) {
        self.module().registers.passage_in_progress = on;
    }

    /// The next `times` requests get `fault`.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.module()
            .faults
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Faults not yet used by a request.
    pub fn faults_pending(&self) -> usize {
        self.module().faults.len()
    }

    /// Requests addressed to this module so far.
    pub fn requests(&self) -> u64 {
        self.module().requests
    }

    pub fn coil_writes(&self) -> Vec<CoilWrite> {
        self.module().coil_writes.clone()
    }

    /// Coil writes from now on, as they arrive.
    pub fn watch_coil_writes(&self) -> mpsc::Receiver<CoilWrite> {
        let (tx, rx) = mpsc::channel();
        self.module().notify = Some(tx);
        rx
    }
}

impl Drop for GateSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Then `pty` drops: the line goes dead and the stable name disappears, like an unplug.
    }
}

/// Reads requests from the master side and answers them until stopped.
fn serve(mut master: std::fs::File, module: &Mutex<Module>, stop: &AtomicBool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut reader = RequestReader::new();
    let mut buf = [0u8; 256];
    let mut last_byte = Instant::now();
    let tick = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::ZERO);
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, tick).unwrap_or(0);
        let readable = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        if ready == 0 || !readable {
            if ready > 0 {
                // POLLHUP without data: nobody has the port open; do not spin.
                std::thread::sleep(TICK);
            }
            continue;
        }
        let n = match master.read(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        };
        let now = Instant::now();
        if now.duration_since(last_byte) > PARTIAL_REQUEST {
            reader.reset();
        }
        last_byte = now;
        reader.push(&buf[..n]);
        while let Some(parsed) = reader.next() {
            let mut m = module.lock().unwrap_or_else(|e| e.into_inner());
            let reply = match parsed {
                Ok(request) if request.unit() == m.unit => m.answer(request, now),
                // Another unit's request, or one damaged on the line: a real module stays quiet.
                Ok(_) => Vec::new(),
                Err(ModbusError::Unsupported {
                    unit,
                    function,
                    exception,
                }) if unit == m.unit => exception_response(unit, function, exception),
                Err(_) => Vec::new(),
            };
            drop(m);
            if !reply.is_empty() && master.write_all(&reply).is_err() {
                break;
            }
        }
    }
}

/// One line of the `phygate simulate gate` console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    In(u32),
    Out(u32),
    Set(u32, u32),
    /// Counters just below 2³², so the next passages wrap.
    Wrap,
    Reset,
    Alarm(bool),
    Fault(Fault, usize),
    Coils,
    Status,
    Help,
}

pub const HELP: &str = "commands: in [N] | out [N] | set IN OUT | wrap | reset | alarm on|off | \
fault exception [CODE]|crc|silence|hang|garbage [TIMES] | coils | status | help";

pub fn parse_command(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize, default: u32| -> Result<u32, String> {
        words.get(i).map_or(Ok(default), |w| {
            w.parse().map_err(|_| format!("{w:?} is not a number"))
        })
    };
    Ok(match words.as_slice() {
        ["in", ..] => Command::In(num(1, 1)?),
        ["out", ..] => Command::Out(num(1, 1)?),
        ["set", _, _] => Command::Set(num(1, 0)?, num(2, 0)?),
        ["wrap"] => Command::Wrap,
        ["reset"] => Command::Reset,
        ["alarm", "on"] => Command::Alarm(true),
        ["alarm", "off"] => Command::Alarm(false),
        ["fault", "exception", ..] => {
            let code = num(2, u32::from(EXC_SERVER_DEVICE_FAILURE))?;
            let code = u8::try_from(code).map_err(|_| "an exception code is 1-255".to_string())?;
            Command::Fault(Fault::Exception(code), num(3, 1)? as usize)
        }
        ["fault", kind, ..] => {
            let fault = match *kind {
                "crc" => Fault::BadCrc,
                "silence" => Fault::Silence,
                "hang" => Fault::HangMidFrame,
                "garbage" => Fault::Garbage,
                other => return Err(format!("unknown fault {other:?}; {HELP}")),
            };
            Command::Fault(fault, num(2, 1)? as usize)
        }
        ["coils"] => Command::Coils,
        ["status"] => Command::Status,
        ["help"] | [] => Command::Help,
        _ => return Err(format!("unknown command {line:?}; {HELP}")),
    })
}

impl GateSim {
    /// Applies a console command; returns what to print.
    pub fn apply(&self, command: &Command) -> String {
        match *command {
            Command::In(n) => self.pass_in(n),
            Command::Out(n) => self.pass_out(n),
            Command::Set(i, o) => self.set_counters(i, o),
            Command::Wrap => self.set_counters(u32::MAX - 1, u32::MAX - 1),
            Command::Reset => self.reset(),
            Command::Alarm(on) => self.set_alarm(on),
            Command::Fault(f, times) => self.inject(f, times),
            Command::Coils => {
                let writes = self.coil_writes();
                return format!("{} coil writes: {writes:?}", writes.len());
            }
            Command::Status | Command::Help => {}
        }
        let (i, o) = self.counters();
        let m = self.module();
        let line = format!(
            "in={i} out={o} alarm={} requests={} faults_pending={}",
            m.registers.alarm,
            m.requests,
            m.faults.len()
        );
        if *command == Command::Help {
            format!("{HELP}\n{line}")
        } else {
            line
        }
    }
}

/// `phygate simulate gate`: a module on a pty at `link`, driven by commands on stdin. Keeps
/// answering after stdin ends, until killed.
pub fn run_cli(link: &Path, unit: u8) -> anyhow::Result<()> {
    let sim = GateSim::start(link, unit)?;
    eprintln!(
        "simulated gate I/O module (unit {unit}) on {} (-> {}); set `port = \"{}\"` in a \
         `kind = \"gate\"` device\n{HELP}",
        sim.pty.link.display(),
        sim.pty.slave_path.display(),
        sim.pty.link.display()
    );
    let writes = sim.watch_coil_writes();
    let started = Instant::now();
    std::thread::spawn(move || {
        for w in writes {
            // A closed stdout is no reason to stop the simulated module.
            let _ = crate::outln!(
                "coil {} written {} at +{:.3}s",
                w.address,
                if w.on { "FF00 (unlock)" } else { "0000" },
                w.at.duration_since(started).as_secs_f64()
            );
        }
    });
    for line in std::io::stdin().lines() {
        match parse_command(&line?) {
            Ok(c) => crate::outln!("{}", sim.apply(&c))?,
            Err(e) => eprintln!("{e}"),
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_commands_parse() {
        assert_eq!(parse_command("in 3"), Ok(Command::In(3)));
        assert_eq!(parse_command("out"), Ok(Command::Out(1)));
        assert_eq!(parse_command("set 10 20"), Ok(Command::Set(10, 20)));
        assert_eq!(parse_command(" alarm on "), Ok(Command::Alarm(true)));
        assert_eq!(
            parse_command("fault exception 2 3"),
            Ok(Command::Fault(Fault::Exception(2), 3))
        );
        assert_eq!(
            parse_command("fault silence 3"),
            Ok(Command::Fault(Fault::Silence, 3))
        );
        assert!(parse_command("fault fire").is_err());
        assert!(parse_command("in many").is_err());
        assert!(parse_command("dance").is_err());
    }

    fn module() -> Module {
        Module {
            unit: 1,
            registers: GateRegisters {
                pass_in: 0x0001_0002,
                pass_out: 7,
                passage_in_progress: false,
                alarm: true,
            },
            faults: VecDeque::new(),
            coil_writes: Vec::new(),
            requests: 0,
            notify: None,
        }
    }

    #[test]
    fn module_answers_the_default_map_and_records_coils() {
        let mut m = module();
        let poll = Request::read_holding(1, 0, 5).unwrap();
        let answer = m.answer(poll, Instant::now());
        let parsed = crate::sources::gate::modbus::parse_response(&poll, &answer).unwrap();
        assert_eq!(
            parsed,
            Response::ReadHolding {
                registers: vec![1, 2, 0, 7, 0b10]
            }
        );
        let unlock = Request::write_single_coil(1, 0, true).unwrap();
        assert_eq!(m.answer(unlock, Instant::now()), unlock.encode(), "echo");
        assert_eq!(m.coil_writes.len(), 1);
        let far = Request::read_holding(1, 3, 5).unwrap();
        assert_eq!(
            crate::sources::gate::modbus::parse_response(&far, &m.answer(far, Instant::now())),
            Err(ModbusError::Exception {
                code: EXC_ILLEGAL_DATA_ADDRESS
            })
        );
    }

    #[test]
    fn faults_damage_one_answer_each() {
        use crate::sources::gate::modbus::ResponseReader;
        let mut m = module();
        let poll = Request::read_holding(1, 0, 5).unwrap();
        let outcome = |m: &mut Module| {
            let mut r = ResponseReader::new(poll);
            r.push(&m.answer(poll, Instant::now()))
                .unwrap_or_else(|| Err(r.timed_out()))
        };
        m.faults.extend([
            Fault::Exception(4),
            Fault::BadCrc,
            Fault::Silence,
            Fault::HangMidFrame,
            Fault::Garbage,
        ]);
        assert_eq!(outcome(&mut m), Err(ModbusError::Exception { code: 4 }));
        assert!(matches!(
            outcome(&mut m),
            Err(ModbusError::CrcMismatch { .. })
        ));
        assert_eq!(outcome(&mut m), Err(ModbusError::NoResponse));
        assert!(matches!(
            outcome(&mut m),
            Err(ModbusError::Truncated { .. })
        ));
        assert!(matches!(
            outcome(&mut m),
            Err(ModbusError::WrongFunction { .. })
        ));
        assert!(outcome(&mut m).is_ok(), "faults are used up");
        assert_eq!(m.requests, 6);
    }
}
