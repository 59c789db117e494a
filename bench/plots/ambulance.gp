# bench: edp-bench-ambulance
# data: ambulance-latency.csv ambulance-throughput.csv
# title: Ambulance: priority latency and standard throughput per mode
# caption: Left: over a standing backlog, priority messages in carpool, ambulance and native wait milliseconds while fifo's wait seconds behind the backlog; right: what each mode costs the standard messages (carpool idles its lane, ambulance stays close to fifo's).
load plotdir.'/common.gpi'
set terminal svg size 1100,500 dynamic enhanced font "sans,12" background "white"
set output out
lat = dir.'/ambulance-latency.csv'
thr = dir.'/ambulance-throughput.csv'
set multiplot layout 1,2 title "Ambulance: priority messages over a standing backlog of 5,000 standard ones (1 ms handler)".note

set title "Priority latency, send to processed (CDF)"
set xlabel "priority latency (ms, log scale)"
set ylabel "fraction of priority messages at or below"
set logscale x 10
set yrange [0:1.02]
set key bottom right
m(name) = strcol(1) eq name ? $3 : NaN
# The table's target: priority p99 under 5 x handler + 10 ms = 15 ms.
set arrow 1 from 15, graph 0 to 15, graph 1 nohead dt 2 lc rgb "#555555"
set label 1 "p99 target 15 ms" at 17, graph 0.5 rotate by 90 tc rgb "#555555"
plot lat using 2:(m("fifo")) with lines ls 2 title "fifo (one queue)", \
     lat using 2:(m("carpool")) with lines ls 3 title "carpool (dedicated lane)", \
     lat using 2:(m("ambulance")) with lines ls 1 title "ambulance (lane, standard when idle)", \
     lat using 2:(m("native")) with lines ls 4 title "native (x-max-priority)"

set title "Standard throughput while priority messages flow"
unset arrow 1
unset label 1
unset logscale x
set autoscale xy
stats thr using 2 nooutput
set xlabel "mode"
set ylabel "standard messages per second (msg/s)"
set yrange [0:STATS_max * 1.25]
set xrange [-0.6:3.6]
set boxwidth 0.6
set style fill solid 0.7 border lc rgb "#333333"
set key top right
plot thr using 0:2:xtic(1) with boxes lc rgb "#1f77b4" title "standard msg/s (labels: rate, ratio to fifo)", \
     thr using 0:2:(sprintf("%.0f\n%.2f x fifo", $2, $3)) with labels offset 0,2 notitle
unset multiplot
