// train(): the loop. Its pieces are in parts.h (checks, start and saves, reports).
#include <stdexcept>
#include <string>

#include "dist/dist.h"
#include "train/parts.h"

namespace chargpt {

TrainResult train(const TrainOptions& opts, std::ostream& out) {
  Collective& comm = dist::world();  // this process alone, or every rank under mpirun
  TrainOptions o = opts;
  if (comm.rank() != 0) o.quiet = true, o.log_path.clear();  // rank 0 prints, logs and saves
  check_options(o);
  const FileLock lock = check_outputs(o, comm);  // held to the end
  const auto t_start = Clock::now();
  RunStart run = start_run(o, comm);
  Engine& e = *run.engine;
  const Dataset& ds = run.ds;
  Reporter report(o, out, e);
  Saver saver{o, ds};
  report.header(ds);
  report.note(run.resume_note);

  const int decay_steps = o.lr_decay_steps > 0 ? o.lr_decay_steps : o.steps;
  const int start_step = e.step();
  TrainResult res;
  const auto t_loop = Clock::now();
  while (e.step() < o.steps) {
    const int it = e.step();
    // (a resumed run was evaluated at its start step before it was saved)
    if (o.eval_interval > 0 && it % o.eval_interval == 0 && (it != start_step || start_step == 0))
      report.evaluation(it, estimate_losses(e, ds, o, it));
    const float lr = lr_at(it, o.lr, o.min_lr, o.warmup, decay_steps);
    const auto t_step = Clock::now();
    double loss = 0, norm = 0;
    try {
      loss = e.train_step(ds.train, lr, o.grad_clip, o.adamw, &norm);
    } catch (const std::exception& ex) {
      throw std::runtime_error(std::string(ex.what()) + "; training stopped; " + saver.on_disk());
    }
    report.step(e.step(), loss, lr, norm, seconds_since(t_step));
    if (o.save_interval > 0 && e.step() % o.save_interval == 0) saver.save(e);
    if (!report.log_error().empty()) {
      saver.save(e);
      throw std::runtime_error(report.log_error() + "; training stopped after step " + std::to_string(e.step()) +
                               ", saved to '" + o.out_path + "'");
    }
    if (comm.any(o.should_stop && o.should_stop())) {  // every rank stops at the same step
      saver.save(e);
      res.interrupted = true;
      report.interrupted(e.step());
      break;
    }
  }
  report.end_of_steps();

  res.steps = e.step();
  res.steps_this_run = e.step() - start_step;
  res.tok_per_s = res.steps_this_run > 0 ? res.steps_this_run * (double)o.batch_size * e.cfg().block_size /
                                               seconds_since(t_loop)
                                         : 0;
  if (!res.interrupted) {  // an interrupted run has saved already and skips the final evaluation
    saver.save(e);
    const Losses end = estimate_losses(e, ds, o, e.step());
    report.evaluation(e.step(), end);
    res.train_loss = end.train;
    res.val_loss = end.val;
  }
  report.close_log();
  res.wall_s = seconds_since(t_start);
  res.peak_rss_bytes = peak_rss_bytes();
  report.done(res);
  return res;
}

}  // namespace chargpt
