# bench: edp-bench-thread
# data: thread-scaling.csv
# title: Thread delegate: throughput against workers
# caption: With 2 ms of I/O per message the dispatcher follows the ideal line (workers x one ordered consumer) from 1 to 32 workers, every account keeping its order; the flat line is the single ordered consumer it replaces.
load plotdir.'/common.gpi'
f = dir.'/thread-scaling.csv'
set title "Thread delegate: throughput against workers (2 ms handler, 1,000 accounts, order kept)".note
set xlabel "workers (threads of one dispatcher, log scale)"
set ylabel "messages processed per second (msg/s, log scale)"
set logscale x 2
set logscale y 10
set xrange [0.8:40]
set xtics ("1" 1, "2" 2, "4" 4, "8" 8, "16" 16, "32" 32)
set key top left
plot f using 1:4 with lines ls 5 title "ideal: workers x single consumer", \
     f using 1:5 with lines ls 2 dt 3 title "single ordered consumer (baseline)", \
     f using 1:2 with linespoints ls 1 title "thread delegate, best of 2 runs", \
     f using 1:3 with points ls 3 pt 6 ps 1 title "thread delegate, other run", \
     f using 1:2:(sprintf("%.0f", $2)) with labels offset 0,-1.2 notitle
