# bench: edp-bench-supervisor
# data: supervisor-timeline.csv supervisor-latency.csv
# title: Supervisor consumer: static max against supervised through a step load
# caption: Through the 10x burst (shaded), ten static consumers (left) and the supervisor (right) keep each message's latency near the 10 ms handler; the supervisor starts consumers as the backlog appears and retires them after the keep-alive, paying for a fraction of the consumer-seconds.
load plotdir.'/common.gpi'
set terminal svg size 1200,700 dynamic enhanced font "sans,12" background "white"
set output out
tl = dir.'/supervisor-timeline.csv'
lat = dir.'/supervisor-latency.csv'
# The step load of edp-bench-supervisor: 30 msg/s for 4 s, 300 msg/s for
# 8 s (the burst), 30 msg/s for 4 s.
burst_from = 4
burst_to = 12
pick(col, name) = strcol(1) eq name ? column(col) : NaN
both(col) = (strcol(1) eq "static-max" || strcol(1) eq "supervisor") ? column(col) : NaN
stats tl using (both(3)) nooutput
depth_max = STATS_max > 5 ? STATS_max * 1.15 : 6
stats lat using (both(3)) nooutput
lat_max = STATS_max * 2
stats tl using 2 nooutput
t_max = STATS_max
set object 1 rect from burst_from, graph 0 to burst_to, graph 1 back fc rgb "#fff2cc" fs solid 1.0 noborder

set multiplot layout 2,2 title "Supervisor consumer: step load 30 -> 300 -> 30 msg/s, 10 ms of work per message".note
set xrange [0:t_max]
do for [run in "static-max supervisor"] {
  set title (run eq "static-max" ? "static max: 10 consumers all the time" : "supervisor: 2..10 consumers, one per queued message, keep-alive 3 s")
  set xlabel "time since the load started (s; shaded: the burst)"
  set ylabel "queue depth (messages ready)"
  set y2label "active consumers"
  set yrange [0:depth_max]
  set y2range [0:16]
  set ytics nomirror
  set y2tics 0,2,10
  set key top right
  plot tl using 2:(pick(3, run)) with steps ls 2 title "queue depth", \
       tl using 2:(pick(4, run)) axes x1y2 with steps ls 1 title "active consumers"
}
unset y2label
unset y2tics
set ytics mirror
do for [run in "static-max supervisor"] {
  set title "per-message latency, publish to processed"
  set xlabel "time the message was sent (s)"
  set ylabel "latency (ms, log scale)"
  set logscale y
  set yrange [5:lat_max]
  set ytics (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
  set key top right
  plot lat using 2:(pick(3, run)) with points pt 7 ps 0.25 lc rgb "#1f77b4" title "one message", \
       10 with lines ls 5 title "handler time (10 ms)"
  unset logscale y
}
unset multiplot
